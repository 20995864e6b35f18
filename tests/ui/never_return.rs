use static_call::static_call;

extern "C" fn stop() -> ! {
    std::process::abort()
}

#[static_call]
static K: extern "C" fn() -> ! = stop;

fn main() {}
