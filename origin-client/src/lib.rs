//! The origin protocol of the edge: the object model (hashes, tree nodes, records), the
//! stores that hold it, and publishing.
//!
//! Store layout, shared by every backend:
//!
//! ```text
//! objects/<hh>/<hash>         a blob or an encoded tree node; hash = blake3(bytes), hex
//! hosts/<host>                HostRecord (JSON): which site a host name belongs to
//! host-index                HostIndex (JSON): every host record in one object
//! sites/<site>/current        CurrentPointer (JSON): the active deploy
//! sites/<site>/deploys/<id>   DeployRecord (JSON), append-only
//! sites/<site>/history        deploy ids, one per line (for readers that cannot list)
//! ```

#![forbid(unsafe_code)]

pub mod compress;
pub mod gc;
mod hash;
pub mod hosts;
pub mod publish;
pub mod records;
pub mod resilience;
pub mod reuse;
pub mod rules;
pub mod store;
pub mod tree;

pub use hash::{Hash, ParseHashError};
pub use records::{CurrentPointer, DeployRecord, HostRecord};
pub use store::{
    Access, Store, StoreError, StoreOptions, open_store, open_store_opts, open_store_with,
};
pub use tree::{Entry, EntryKind, TreeError, TreeNode};
