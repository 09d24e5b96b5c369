//! OT-Flow potential (in progress).
