//! End-to-end and chaos tests that run real `gaios-server` processes. Empty
//! until the cell and chaos milestones (issues 3 and 5).
