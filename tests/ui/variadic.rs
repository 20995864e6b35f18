use static_call::static_call;

extern "C" {
    fn printf(fmt: *const u8, ...) -> i32;
}

#[static_call]
static K: unsafe extern "C" fn(*const u8, ...) -> i32 = printf;

fn main() {}
