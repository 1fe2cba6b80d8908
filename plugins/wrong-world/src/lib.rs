//! wrong-world: a perfectly good component that is not a step plugin, used
//! to check that stepd refuses it with a clear error.

#[allow(unsafe_code, missing_docs)]
mod bindings {
    wit_bindgen::generate!({ world: "greeter", path: "wit" });
}

use bindings::Guest;

struct Greeter;

impl Guest for Greeter {
    fn greet(name: String) -> String {
        format!("hello {name}")
    }
}

#[allow(unsafe_code)]
const _: () = {
    bindings::export!(Greeter with_types_in bindings);
};
