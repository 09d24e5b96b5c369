//! socflow C ABI (issue 5).
