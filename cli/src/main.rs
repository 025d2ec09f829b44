fn main() {
    println!("hastack");
}
