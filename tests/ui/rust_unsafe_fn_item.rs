use static_call::static_call;

unsafe fn raw(p: *const u8) -> u8 {
    unsafe { *p }
}

#[static_call]
static K: unsafe fn(*const u8) -> u8 = |_| 0;

fn main() {
    K.update(raw);
}
