//! Run one fuzz target on one input file, with the panic shown:
//! `cargo run -p cni-fuzz --example replay -- <target> <file>`.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, name, file] = args.as_slice() else {
        eprintln!("usage: replay <target> <file>");
        std::process::exit(2);
    };
    let (_, f) = cni_fuzz::TARGETS
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no target {name}"));
    f(&std::fs::read(file).unwrap());
    eprintln!("{name}: no failure");
}
