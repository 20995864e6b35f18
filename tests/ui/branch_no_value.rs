use static_call::static_branch;

#[static_branch]
static TRACE: bool;

fn main() {}
