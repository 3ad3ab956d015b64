//! The application's logic, as the HTTP handlers (and the delivery worker) call it: job
//! admission, sending deliveries again, and subscription health. Handlers parse and validate
//! requests at the edge, call one of these, and render the outcome; the store is reached from
//! here, not from the handlers, for anything beyond a plain read.

pub mod admission;
pub mod resend;
pub mod subscriptions;
