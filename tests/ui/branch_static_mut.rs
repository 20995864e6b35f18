use static_call::static_branch;

#[static_branch]
static mut TRACE: bool = false;

fn main() {}
