//! Unit tests of the session actor, driven through fake upstream links.
