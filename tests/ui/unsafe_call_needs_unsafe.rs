use static_call::static_call;

unsafe extern "C" fn read(p: *const u64) -> u64 {
    // SAFETY: the caller passes a valid pointer.
    unsafe { *p }
}

#[static_call]
static K: unsafe extern "C" fn(*const u64) -> u64 = read;

fn main() {
    let x = 5u64;
    K.call(&x);
}
