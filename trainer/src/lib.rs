//! socflow trainer (issue 3).
