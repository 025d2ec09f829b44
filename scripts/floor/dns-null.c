/*
 * dns-null: the cheapest UDP DNS responder we could write, used by scripts/bench-dns.sh --floor to
 * measure what ANY user-space server pays per query on this kernel (the floor under hastack).
 *
 * One thread, one socket, blocking recvmmsg(MSG_WAITFORONE) of up to 64 datagrams, one sendmmsg
 * for all their answers. Per query it only finds the end of the question: the answer is the header
 * and question copied, QR/AA/RA set, ANCOUNT=1, and one record whose owner is a compression
 * pointer to the question name. The record has the question's type: PTR gets a pointer back to the
 * question name as its target, every other type gets a fixed A record (198.18.0.1, TTL 10). So
 * "NXDOMAIN" and "cached forward" queries get the same shape of answer as a local A (no SOA, no
 * lookup): a floor, not a server. EDNS and additional records of the query are not echoed.
 *
 * Build: gcc -O2 -o dns-null dns-null.c      Run: dns-null ADDRESS PORT  (IPv4; ends on SIGTERM)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define BATCH 64
#define QMAX 512
#define AMAX 600

static volatile sig_atomic_t stop;
static void on_term(int sig) { (void)sig; stop = 1; }

/* Length of header + question, or 0 if the datagram is not one plain query. */
static size_t question_end(const uint8_t *q, size_t n) {
    if (n < 12 || (q[2] & 0x80) || q[4] != 0 || q[5] != 1) return 0;
    size_t at = 12;
    while (at < n) {
        uint8_t l = q[at];
        if (l == 0) { at += 1; break; }
        if (l & 0xc0) return 0;
        at += 1 + l;
    }
    if (at + 4 > n) return 0;
    return at + 4;
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: %s ADDRESS PORT\n", argv[0]); return 2; }
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2])) };
    if (inet_pton(AF_INET, argv[1], &sa.sin_addr) != 1) { fprintf(stderr, "bad address %s\n", argv[1]); return 2; }
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) { perror("socket"); return 1; }
    int rcvbuf = 4 << 20; /* as hastack's DNS socket */
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) { perror("bind"); return 1; }
    struct sigaction act = { .sa_handler = on_term }; /* no SA_RESTART: recvmmsg returns EINTR */
    sigaction(SIGTERM, &act, NULL);
    sigaction(SIGINT, &act, NULL);

    static uint8_t qbuf[BATCH][QMAX], abuf[BATCH][AMAX];
    static struct sockaddr_in peers[BATCH];
    static struct iovec qiov[BATCH], aiov[BATCH];
    static struct mmsghdr qm[BATCH], am[BATCH];
    for (int i = 0; i < BATCH; i++) {
        qiov[i] = (struct iovec){ qbuf[i], QMAX };
        qm[i].msg_hdr = (struct msghdr){ .msg_name = &peers[i], .msg_iov = &qiov[i], .msg_iovlen = 1 };
        aiov[i].iov_base = abuf[i];
        am[i].msg_hdr = (struct msghdr){ .msg_iov = &aiov[i], .msg_iovlen = 1, .msg_namelen = sizeof peers[i] };
    }
    unsigned long long answered = 0, dropped = 0;
    while (!stop) {
        for (int i = 0; i < BATCH; i++) qm[i].msg_hdr.msg_namelen = sizeof peers[i];
        int got = recvmmsg(fd, qm, BATCH, MSG_WAITFORONE, NULL);
        if (got < 0) {
            if (errno == EINTR) continue;
            perror("recvmmsg");
            return 1;
        }
        int out = 0;
        for (int i = 0; i < got; i++) {
            const uint8_t *q = qbuf[i];
            size_t end = question_end(q, qm[i].msg_len);
            if (end == 0 || end + 16 > AMAX) { dropped++; continue; }
            uint8_t *a = abuf[out];
            memcpy(a, q, end);
            a[2] = (uint8_t)((q[2] & 0x79) | 0x84); /* QR, keep opcode and RD, set AA */
            a[3] = 0x80;                           /* RA, NOERROR */
            a[6] = 0; a[7] = 1;                    /* ANCOUNT 1 */
            a[8] = a[9] = a[10] = a[11] = 0;       /* NSCOUNT, ARCOUNT 0 */
            uint8_t *r = a + end;
            uint16_t qtype = (uint16_t)(q[end - 4] << 8 | q[end - 3]);
            *r++ = 0xc0; *r++ = 12;                /* owner: pointer to the question name */
            if (qtype == 12) {                     /* PTR: target = the question name again */
                *r++ = 0; *r++ = 12; *r++ = 0; *r++ = 1;
                *r++ = 0; *r++ = 0; *r++ = 0; *r++ = 10;
                *r++ = 0; *r++ = 2; *r++ = 0xc0; *r++ = 12;
            } else {                               /* anything else: A 198.18.0.1 */
                *r++ = 0; *r++ = 1; *r++ = 0; *r++ = 1;
                *r++ = 0; *r++ = 0; *r++ = 0; *r++ = 10;
                *r++ = 0; *r++ = 4; *r++ = 198; *r++ = 18; *r++ = 0; *r++ = 1;
            }
            aiov[out].iov_len = (size_t)(r - a);
            am[out].msg_hdr.msg_name = &peers[i];
            am[out].msg_hdr.msg_namelen = qm[i].msg_hdr.msg_namelen;
            out++;
        }
        for (int sent = 0; sent < out;) {
            int n = sendmmsg(fd, am + sent, (unsigned)(out - sent), 0);
            if (n < 0) {
                if (errno == EINTR) continue;
                dropped += (unsigned long long)(out - sent); /* e.g. ENOBUFS: the rest is lost, as a server would */
                break;
            }
            sent += n;
        }
        answered += (unsigned long long)out;
    }
    fprintf(stderr, "dns-null: answered %llu dropped %llu\n", answered, dropped);
    return 0;
}
