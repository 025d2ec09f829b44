/* The floor: the cheapest TCP relay we know how to write, to measure what any copying proxy can
 * reach on a machine (req/s and CPU per request) beside HAProxy and hastack in one benchmark run.
 *
 * One epoll loop per thread, each with its own SO_REUSEPORT listener; accept, connect to the
 * backends round robin (non-blocking), then recv/send through one fixed per-thread buffer,
 * level-triggered. Bytes a destination does not take are kept per direction (malloc'd then) and
 * the source is not read again until they are delivered. A FIN is forwarded with shutdown(SHUT_WR)
 * once every byte before it was; a pair is closed when both directions ended or on any error.
 * TCP_NODELAY on both sides (as HAProxy and hastack). Nothing else: no timeouts, no health checks,
 * no counters, no limits. Not a product; a yardstick. Known shortcut: a socket that reports
 * EPOLLHUP while bytes read from it still wait for the other side closes the pair (a benchmark
 * with keep-alive clients never gets there).
 *
 * Build: gcc -O2 -pthread -o relay relay.c
 * Usage: relay [-t THREADS] LISTEN_IP:PORT BACKEND_IP:PORT [BACKEND_IP:PORT ...]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF 16384
#define MAXEV 256
#define MAXBE 16

struct pair;
struct end {            /* one socket of a pair; epoll's data.ptr */
    struct pair *p;
    int i;              /* 0: client, 1: server */
};
struct pair {
    int fd[2];
    struct end e[2];
    unsigned mask[2];   /* events registered for fd[i] */
    char *stash[2];     /* bytes read from fd[i] not yet written to fd[1-i] */
    int off[2], len[2];
    int eof[2];         /* FIN read from fd[i] */
    int shut[2];        /* shutdown(fd[i], SHUT_WR) done */
    int connecting;
    int closed;
    struct pair *next_free;
};

static struct sockaddr_in listen_addr;
static struct sockaddr_in backends[MAXBE];
static int nbackends;

static int parse_addr(const char *s, struct sockaddr_in *a) {
    char host[64];
    const char *c = strrchr(s, ':');
    if (!c || (size_t)(c - s) >= sizeof host) return -1;
    memcpy(host, s, c - s);
    host[c - s] = 0;
    memset(a, 0, sizeof *a);
    a->sin_family = AF_INET;
    a->sin_port = htons(atoi(c + 1));
    return inet_pton(AF_INET, host, &a->sin_addr) == 1 ? 0 : -1;
}

struct loop {
    int ep;
    int lfd;
    unsigned next_be;
    char buf[BUF];
    struct pair *dead;  /* closed this round; freed after the event batch */
};

static void set_mask(struct loop *l, struct pair *p, int i, unsigned m) {
    if (p->mask[i] == m) return;
    struct epoll_event ev = {.events = m, .data.ptr = &p->e[i]};
    epoll_ctl(l->ep, EPOLL_CTL_MOD, p->fd[i], &ev);
    p->mask[i] = m;
}

static void close_pair(struct loop *l, struct pair *p) {
    if (p->closed) return;
    p->closed = 1;
    for (int i = 0; i < 2; i++) {
        close(p->fd[i]);
        free(p->stash[i]);
    }
    p->next_free = l->dead;
    l->dead = p;
}

/* Interest of both sockets from the pair's state. */
static void update(struct loop *l, struct pair *p) {
    if (p->closed) return;
    if (p->eof[0] && p->eof[1] && !p->len[0] && !p->len[1]) {
        close_pair(l, p);
        return;
    }
    for (int i = 0; i < 2; i++) {
        unsigned m = 0;
        if (!p->connecting && !p->eof[i] && !p->len[i]) m |= EPOLLIN;
        if (p->len[1 - i] || (i == 1 && p->connecting)) m |= EPOLLOUT;
        set_mask(l, p, i, m);
    }
}

/* Sends src's stash to fd[1-src]; forwards the FIN once it is empty. -1: error. */
static int flush(struct pair *p, int src) {
    int dst = 1 - src;
    while (p->len[src]) {
        ssize_t n = send(p->fd[dst], p->stash[src] + p->off[src], p->len[src], MSG_NOSIGNAL);
        if (n < 0) return (errno == EAGAIN || errno == EINTR) ? 0 : -1;
        p->off[src] += n;
        p->len[src] -= n;
    }
    free(p->stash[src]);
    p->stash[src] = NULL;
    p->off[src] = 0;
    if (p->eof[src] && !p->shut[dst]) {
        shutdown(p->fd[dst], SHUT_WR);
        p->shut[dst] = 1;
    }
    return 0;
}

/* One recv from fd[i], sent on at once. -1: error. */
static int pump(struct loop *l, struct pair *p, int i) {
    ssize_t n = recv(p->fd[i], l->buf, BUF, 0);
    if (n < 0) return (errno == EAGAIN || errno == EINTR) ? 0 : -1;
    if (n == 0) {
        p->eof[i] = 1;
        return flush(p, i);
    }
    ssize_t m = send(p->fd[1 - i], l->buf, n, MSG_NOSIGNAL);
    if (m < 0) {
        if (errno != EAGAIN) return -1;
        m = 0;
    }
    if (m < n) {
        p->stash[i] = malloc(n - m);
        if (!p->stash[i]) return -1;
        memcpy(p->stash[i], l->buf + m, n - m);
        p->off[i] = 0;
        p->len[i] = n - m;
    }
    return 0;
}

static void on_accept(struct loop *l) {
    for (;;) {
        int c = accept4(l->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (c < 0) return;
        int s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (s < 0) { close(c); continue; }
        int one = 1;
        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct sockaddr_in *be = &backends[l->next_be++ % nbackends];
        if (connect(s, (struct sockaddr *)be, sizeof *be) < 0 && errno != EINPROGRESS) {
            close(c);
            close(s);
            continue;
        }
        struct pair *p = calloc(1, sizeof *p);
        if (!p) { close(c); close(s); continue; }
        p->fd[0] = c;
        p->fd[1] = s;
        p->connecting = 1;
        for (int i = 0; i < 2; i++) {
            p->e[i].p = p;
            p->e[i].i = i;
            p->mask[i] = i == 1 ? EPOLLOUT : 0;
            struct epoll_event ev = {.events = p->mask[i], .data.ptr = &p->e[i]};
            epoll_ctl(l->ep, EPOLL_CTL_ADD, p->fd[i], &ev);
        }
    }
}

static void on_event(struct loop *l, struct end *e, unsigned ev) {
    struct pair *p = e->p;
    int i = e->i;
    if (p->closed) return;
    if (p->connecting) {
        int err = 0;
        socklen_t len = sizeof err;
        if (i != 1) return;
        if (getsockopt(p->fd[1], SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err) {
            close_pair(l, p);
            return;
        }
        p->connecting = 0;
        update(l, p);
        return;
    }
    if ((ev & EPOLLOUT) && p->len[1 - i] && flush(p, 1 - i) < 0) {
        close_pair(l, p);
        return;
    }
    if (ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
        if (!p->eof[i] && !p->len[i]) {
            if (pump(l, p, i) < 0) {
                close_pair(l, p);
                return;
            }
        } else if (ev & (EPOLLHUP | EPOLLERR)) {
            /* Nothing more to read and the socket is gone both ways (or reset). */
            close_pair(l, p);
            return;
        }
    }
    update(l, p);
}

static void *run(void *arg) {
    (void)arg;
    struct loop *l = calloc(1, sizeof *l);
    if (!l) return NULL;
    l->ep = epoll_create1(EPOLL_CLOEXEC);
    l->lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(l->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(l->lfd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    if (bind(l->lfd, (struct sockaddr *)&listen_addr, sizeof listen_addr) < 0 || listen(l->lfd, 4096) < 0) {
        perror("listen");
        exit(1);
    }
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(l->ep, EPOLL_CTL_ADD, l->lfd, &lev);
    struct epoll_event evs[MAXEV];
    for (;;) {
        int n = epoll_wait(l->ep, evs, MAXEV, -1);
        for (int k = 0; k < n; k++) {
            if (!evs[k].data.ptr) on_accept(l);
            else on_event(l, evs[k].data.ptr, evs[k].events);
        }
        while (l->dead) {
            struct pair *p = l->dead;
            l->dead = p->next_free;
            free(p);
        }
    }
    return NULL;
}

int main(int argc, char **argv) {
    int threads = 1, a = 1;
    if (argc > 2 && !strcmp(argv[1], "-t")) {
        threads = atoi(argv[2]);
        a = 3;
    }
    if (argc - a < 2 || threads < 1 || threads > 64 || parse_addr(argv[a], &listen_addr) < 0) {
        fprintf(stderr, "usage: relay [-t THREADS] LISTEN_IP:PORT BACKEND_IP:PORT...\n");
        return 2;
    }
    for (int k = a + 1; k < argc && nbackends < MAXBE; k++)
        if (parse_addr(argv[k], &backends[nbackends++]) < 0) {
            fprintf(stderr, "bad backend %s\n", argv[k]);
            return 2;
        }
    signal(SIGPIPE, SIG_IGN);
    pthread_t t[64];
    for (int k = 1; k < threads; k++) pthread_create(&t[k], NULL, run, NULL);
    run(NULL);
    return 0;
}
