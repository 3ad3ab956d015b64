//! The application's logic, as the HTTP handlers (and the delivery worker) call it: job
//! admission and cancellation, sending deliveries again, subscriptions and secrets with their
//! health. Handlers parse and validate requests at the edge, call one of these, and render the
//! outcome; every write to the store is made from here (handlers only read), and each is
//! durable when the function returns.

pub mod admission;
pub mod jobs;
pub mod resend;
pub mod subscriptions;
