use static_call::static_call;

pub struct Config {
    pub verbose: bool,
}

static DEFAULT: Config = Config { verbose: false };

extern "C" fn config() -> &'static Config {
    &DEFAULT
}

#[static_call]
static K: extern "C" fn() -> &'static Config = config;

fn main() {
    K.reset();
}
