use static_call::static_branch;

#[static_branch]
static LEVEL: u8 = 0;

fn main() {}
