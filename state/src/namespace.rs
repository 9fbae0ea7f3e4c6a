//! The namespace: directories and small files, each permanent or ephemeral,
//! as every replica holds it after applying the same commands in the same
//! order.
//!
//! Everything here is deterministic: no wall clock (times are the master's
//! timestamps carried in commands), no randomness, no iteration over hash
//! maps. Paths are validated once, by [`Path::parse`], before anything else
//! sees them.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::acl::Acl;

use crate::limits::{COMPONENT_BYTES_MAX, CONTENTS_BYTES_MAX, COUNTER_MAX, NODES_MAX, PATH_BYTES_MAX, PATH_DEPTH_MAX};

/// What a node costs in [`Namespace::footprint_bytes`] besides its path and
/// contents: its stat and the map's bookkeeping, roughly.
pub const NODE_OVERHEAD_BYTES: usize = 128;


/// Identifies a client session; ephemeral nodes belong to one.
pub type SessionId = u64;

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// Paths start with `/`.
    #[error("path {0:?} is not absolute")]
    NotAbsolute(String),
    /// `//`, a trailing `/` (except the root), `.` or `..`.
    #[error("path {0:?} has an empty, \".\" or \"..\" component")]
    BadComponent(String),
    /// Control characters (including NUL) are not allowed anywhere.
    #[error("path {0:?} contains a control character")]
    ControlCharacter(String),
    /// Longer than [`PATH_BYTES_MAX`] or a component longer than
    /// [`COMPONENT_BYTES_MAX`].
    #[error("path is {0} bytes or has a component over {COMPONENT_BYTES_MAX} bytes (limit {PATH_BYTES_MAX})")]
    TooLong(usize),
    /// Deeper than [`PATH_DEPTH_MAX`].
    #[error("path has {0} components (limit {PATH_DEPTH_MAX})")]
    TooDeep(usize),
}

/// The most bytes of a bad path that an error echoes.
pub const EXCERPT_BYTES_MAX: usize = 64;

/// The start of `text` for an error message: at most
/// [`EXCERPT_BYTES_MAX`] bytes (cut at a character boundary) and, when cut,
/// how long it was, so that a long bad path cannot make a status message
/// long (gRPC C-core clients drop trailers over 8 KiB).
pub fn excerpt(text: &str) -> String {
    if text.len() <= EXCERPT_BYTES_MAX {
        return text.to_string();
    }
    let mut cut = EXCERPT_BYTES_MAX;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}...({} bytes)", &text[..cut], text.len())
}

/// A validated absolute path such as `/ls/cell/config`. The root is `/`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Path(String);

impl Path {
    /// Validates `text` as a path: absolute, no empty, `.` or `..`
    /// components, no control characters, bounded length and depth.
    pub fn parse(text: &str) -> Result<Path, PathError> {
        if !text.starts_with('/') {
            return Err(PathError::NotAbsolute(excerpt(text)));
        }
        if text.len() > PATH_BYTES_MAX {
            return Err(PathError::TooLong(text.len()));
        }
        if text.chars().any(char::is_control) {
            return Err(PathError::ControlCharacter(excerpt(text)));
        }
        if text == "/" {
            return Ok(Path::root());
        }
        let components: Vec<&str> = text[1..].split('/').collect();
        if components.len() > PATH_DEPTH_MAX {
            return Err(PathError::TooDeep(components.len()));
        }
        for component in &components {
            if component.is_empty() || *component == "." || *component == ".." {
                return Err(PathError::BadComponent(excerpt(text)));
            }
            if component.len() > COMPONENT_BYTES_MAX {
                return Err(PathError::TooLong(text.len()));
            }
        }
        Ok(Path(text.to_string()))
    }

    /// The root directory, `/`.
    pub fn root() -> Path {
        Path("/".to_string())
    }

    /// The path as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True for `/`.
    pub fn is_root(&self) -> bool {
        self.0 == "/"
    }

    /// The directory holding this node, and this node's name in it; `None`
    /// for the root.
    pub fn split(&self) -> Option<(Path, &str)> {
        if self.is_root() {
            return None;
        }
        let cut = self.0.rfind('/')?;
        let parent = if cut == 0 { Path::root() } else { Path(self.0[..cut].to_string()) };
        Some((parent, &self.0[cut + 1..]))
    }

    /// The path of the child `name` (already a valid component).
    fn child(&self, name: &str) -> Path {
        if self.is_root() { Path(format!("/{name}")) } else { Path(format!("{}/{name}", self.0)) }
    }
}

impl std::fmt::Display for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A file holds contents; a directory holds nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeKind {
    /// Holds up to [`CONTENTS_BYTES_MAX`] bytes, read and written whole.
    File,
    /// Holds other nodes; deleted only when empty.
    Directory,
}

/// A node's metadata, as `GetStat` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stat {
    /// New each time a node of this name is created, so a handle bound to
    /// one instance notices the node was deleted and recreated.
    pub instance: u64,
    /// File or directory.
    pub kind: NodeKind,
    /// The session that owns an ephemeral node; `None` for a permanent one.
    pub ephemeral_owner: Option<SessionId>,
    /// Increases with every write of the contents (starts at 1).
    pub content_generation: u64,
    /// The generation of the newest grant of the node's lock (every grant,
    /// exclusive or shared, takes the next cell-wide number).
    pub lock_generation: u64,
    /// Increases with every change of the node's ACL.
    pub acl_generation: u64,
    /// FNV-1a 64 of the contents, so clients can tell whether they changed.
    pub checksum: u64,
    /// The master's timestamp (ms since the Unix epoch) of the creation.
    pub created_ms: u64,
    /// The master's timestamp of the last write of the contents.
    pub modified_ms: u64,
    /// The contents' length.
    pub contents_bytes: u64,
    /// How many nodes a directory holds.
    pub children: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Node {
    stat: Stat,
    contents: Bytes,
    /// Shared with the nodes that inherited it unchanged.
    acl: Arc<Acl>,
}

/// What changed, for the sessions that watch: the state machine turns these
/// into numbered events on each interested session's stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A node was created; its parent gained a child.
    ChildAdded {
        /// The directory.
        parent: Path,
        /// The new node.
        path: Path,
    },
    /// A node was deleted; its parent lost a child. Handles bound to
    /// `instance` are now invalid.
    ChildRemoved {
        /// The directory.
        parent: Path,
        /// The deleted node.
        path: Path,
        /// The instance that was deleted.
        instance: u64,
    },
    /// A file's contents were written.
    ContentsModified {
        /// The file.
        path: Path,
    },
}

/// Why an operation on the namespace failed. Each maps to one gRPC status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NamespaceError {
    /// No node at the path (`NOT_FOUND`).
    #[error("no node at {0}")]
    NotFound(Path),
    /// A node already exists at the path (`ALREADY_EXISTS`).
    #[error("a node already exists at {0}")]
    AlreadyExists(Path),
    /// The parent of the path is a file (`FAILED_PRECONDITION`).
    #[error("{0} is not a directory")]
    NotADirectory(Path),
    /// Contents are read and written only on files (`FAILED_PRECONDITION`).
    #[error("{0} is a directory")]
    IsADirectory(Path),
    /// Directories are deleted only when empty (`FAILED_PRECONDITION`).
    #[error("directory {0} is not empty")]
    NotEmpty(Path),
    /// The root cannot be created, deleted or written (`INVALID_ARGUMENT`).
    #[error("the root directory cannot be changed this way")]
    Root,
    /// A compare-and-set found another content generation
    /// (`FAILED_PRECONDITION`).
    #[error("{path} is at content generation {actual}, not {expected}")]
    GenerationMismatch {
        /// The file.
        path: Path,
        /// The generation the write was conditional on.
        expected: u64,
        /// The file's generation.
        actual: u64,
    },
    /// A conditional `SetAcl` found another ACL generation
    /// (`FAILED_PRECONDITION`).
    #[error("{path} is at ACL generation {actual}, not {expected}")]
    AclGenerationMismatch {
        /// The node.
        path: Path,
        /// The generation the change was conditional on.
        expected: u64,
        /// The node's ACL generation.
        actual: u64,
    },
    /// The caller's handle names an instance that no longer exists
    /// (`FAILED_PRECONDITION`).
    #[error("{path} is instance {actual}, the handle was bound to {expected}")]
    InstanceMismatch {
        /// The node.
        path: Path,
        /// The instance the handle was bound to.
        expected: u64,
        /// The node's instance now.
        actual: u64,
    },
    /// Contents over [`CONTENTS_BYTES_MAX`] (`RESOURCE_EXHAUSTED`).
    #[error("contents of {0} bytes exceed the limit of {CONTENTS_BYTES_MAX}")]
    ContentsTooLarge(usize),
    /// The namespace holds [`NODES_MAX`] nodes (`RESOURCE_EXHAUSTED`).
    #[error("the namespace is full ({NODES_MAX} nodes)")]
    Full,
}

/// The tree of nodes, keyed by path so that iteration is in path order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    nodes: BTreeMap<Path, Node>,
    next_instance: u64,
    /// Paths, contents and per-node overhead, kept up to date by every
    /// change so the state machine can bound its snapshot without a scan.
    footprint_bytes: usize,
}

/// One node as a snapshot carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRecord {
    /// Its path.
    pub path: Path,
    /// Its metadata.
    pub stat: Stat,
    /// A file's contents.
    pub contents: Bytes,
    /// Its ACL.
    pub acl: Arc<Acl>,
}

/// What a node costs in the footprint; an inherited ACL is counted for each
/// node that has it, as a snapshot encodes it.
fn node_bytes(path: &Path, contents: &Bytes, acl: &Acl) -> usize {
    NODE_OVERHEAD_BYTES + path.as_str().len() + contents.len() + acl.footprint_bytes()
}

impl Default for Namespace {
    fn default() -> Self {
        Namespace::new()
    }
}

/// FNV-1a 64: a small, stable checksum of contents.
pub fn checksum(contents: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    for &byte in contents {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

impl Namespace {
    /// A namespace holding only the root directory.
    pub fn new() -> Self {
        let root = Node {
            stat: Stat {
                instance: 1,
                kind: NodeKind::Directory,
                ephemeral_owner: None,
                content_generation: 1,
                lock_generation: 0,
                acl_generation: 1,
                checksum: checksum(&[]),
                created_ms: 0,
                modified_ms: 0,
                contents_bytes: 0,
                children: 0,
            },
            contents: Bytes::new(),
            acl: Arc::new(Acl::open()),
        };
        let footprint_bytes = node_bytes(&Path::root(), &root.contents, &root.acl);
        Namespace { nodes: BTreeMap::from([(Path::root(), root)]), next_instance: 2, footprint_bytes }
    }

    /// Roughly how many bytes the namespace takes in a snapshot.
    pub fn footprint_bytes(&self) -> usize {
        self.footprint_bytes
    }

    /// The instance number the next created node gets.
    pub fn next_instance(&self) -> u64 {
        self.next_instance
    }

    /// Every node in path order, for a snapshot.
    pub fn records(&self) -> impl Iterator<Item = NodeRecord> + '_ {
        self.nodes.iter().map(|(path, node)| NodeRecord {
            path: path.clone(),
            stat: node.stat.clone(),
            contents: node.contents.clone(),
            acl: Arc::clone(&node.acl),
        })
    }

    /// Rebuilds a namespace from a snapshot's records, checking that they
    /// form a tree: the root is a directory, every other node's parent is a
    /// directory present in the records, children counts and sizes agree,
    /// no instance is at or above `next_instance`, and no counter is over
    /// [`COUNTER_MAX`].
    pub fn from_records(next_instance: u64, records: Vec<NodeRecord>) -> Result<Namespace, String> {
        if next_instance > COUNTER_MAX {
            return Err(format!("next instance {next_instance} is over {COUNTER_MAX}"));
        }
        let mut nodes = BTreeMap::new();
        let mut footprint_bytes = 0;
        for record in records {
            if record.stat.instance == 0 || record.stat.instance >= next_instance {
                return Err(format!("{} has instance {} (next is {next_instance})", record.path, record.stat.instance));
            }
            let stat = &record.stat;
            if [stat.content_generation, stat.lock_generation, stat.acl_generation].iter().any(|&g| g > COUNTER_MAX) {
                return Err(format!("{} has a generation over {COUNTER_MAX}", record.path));
            }
            if record.stat.contents_bytes != record.contents.len() as u64 || record.contents.len() > CONTENTS_BYTES_MAX {
                return Err(format!("{} has {} bytes of contents", record.path, record.contents.len()));
            }
            if record.stat.checksum != checksum(&record.contents) {
                return Err(format!("{} has a checksum that does not match its contents", record.path));
            }
            if record.stat.kind == NodeKind::Directory && !record.contents.is_empty() {
                return Err(format!("directory {} has contents", record.path));
            }
            footprint_bytes += node_bytes(&record.path, &record.contents, &record.acl);
            let node = Node { stat: record.stat, contents: record.contents, acl: record.acl };
            if nodes.insert(record.path.clone(), node).is_some() {
                return Err(format!("{} appears twice", record.path));
            }
        }
        if nodes.len() > NODES_MAX {
            return Err(format!("{} nodes (limit {NODES_MAX})", nodes.len()));
        }
        match nodes.get(&Path::root()) {
            Some(root) if root.stat.kind == NodeKind::Directory => {}
            _ => return Err("the root directory is missing".to_string()),
        }
        let mut children: BTreeMap<&Path, u64> = BTreeMap::new();
        for path in nodes.keys() {
            if let Some((parent, _)) = path.split() {
                match nodes.get(&parent) {
                    Some(node) if node.stat.kind == NodeKind::Directory => {}
                    _ => return Err(format!("{path} has no parent directory")),
                }
                let Some((parent_key, _)) = nodes.get_key_value(&parent) else { continue };
                *children.entry(parent_key).or_default() += 1;
            }
        }
        for (path, node) in &nodes {
            let counted = children.get(path).copied().unwrap_or(0);
            if node.stat.children != counted {
                return Err(format!("{path} says {} children, has {counted}", node.stat.children));
            }
        }
        Ok(Namespace { nodes, next_instance, footprint_bytes })
    }

    /// Sets a node's lock generation (the state machine hands out lock
    /// generations from one cell-wide counter, so they never repeat for a
    /// path even across deletion and re-creation).
    pub fn set_lock_generation(&mut self, path: &Path, lock_generation: u64) -> Result<(), NamespaceError> {
        let Some(node) = self.nodes.get_mut(path) else { return Err(NamespaceError::NotFound(path.clone())) };
        node.stat.lock_generation = lock_generation;
        Ok(())
    }

    /// The ephemeral nodes, the sessions that own them, and how many
    /// children each has (an ephemeral directory outlives its owner until
    /// its last child goes).
    pub fn ephemeral_owners(&self) -> impl Iterator<Item = (&Path, SessionId, u64)> + '_ {
        self.nodes.iter().filter_map(|(path, node)| node.stat.ephemeral_owner.map(|owner| (path, owner, node.stat.children)))
    }

    /// Recomputes the footprint and checks the tree's shape (the root is a
    /// directory, every other node's parent exists and is a directory,
    /// children counts, every instance below the next, a file's size);
    /// panics on a difference, which is a bug. (Contents checksums are
    /// checked by [`Namespace::from_records`] on restore, not here: this
    /// runs after every command in debug builds and must not scan every
    /// byte of a 48 MiB state each time.)
    pub fn check_invariants(&self) {
        let root = self.nodes.get(&Path::root()).expect("the root exists");
        assert_eq!(root.stat.kind, NodeKind::Directory, "the root is a directory");
        let mut footprint_bytes = 0;
        let mut children: BTreeMap<&Path, u64> = BTreeMap::new();
        for (path, node) in &self.nodes {
            footprint_bytes += node_bytes(path, &node.contents, &node.acl);
            children.entry(path).or_default();
            assert!(node.stat.instance < self.next_instance, "{path}: instance {} not below the next", node.stat.instance);
            assert_eq!(node.stat.contents_bytes, node.contents.len() as u64, "{path}: contents size");
            if let Some((parent, _)) = path.split() {
                let (parent_path, parent_node) = self.nodes.get_key_value(&parent).expect("the parent exists");
                assert_eq!(parent_node.stat.kind, NodeKind::Directory, "{path}: its parent {parent} is a directory");
                *children.entry(parent_path).or_default() += 1;
            }
        }
        for (path, count) in children {
            assert_eq!(self.nodes[path].stat.children, count, "{path}: the children count");
        }
        assert_eq!(footprint_bytes, self.footprint_bytes, "the namespace's footprint");
    }

    /// How many nodes exist, the root included.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false: the root always exists.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Creates a node. Its parent must be an existing directory. Files start
    /// with `contents`; directories must be given none. The node takes its
    /// parent's ACL unless given `acl`.
    pub fn create(
        &mut self,
        path: &Path,
        kind: NodeKind,
        ephemeral_owner: Option<SessionId>,
        contents: Bytes,
        acl: Option<Arc<Acl>>,
        now_ms: u64,
    ) -> Result<(Stat, Vec<Change>), NamespaceError> {
        let Some((parent, _)) = path.split() else { return Err(NamespaceError::Root) };
        if self.nodes.contains_key(path) {
            return Err(NamespaceError::AlreadyExists(path.clone()));
        }
        let parent_node = self.nodes.get(&parent).ok_or_else(|| NamespaceError::NotFound(parent.clone()))?;
        if parent_node.stat.kind != NodeKind::Directory {
            return Err(NamespaceError::NotADirectory(parent.clone()));
        }
        if kind == NodeKind::Directory && !contents.is_empty() {
            return Err(NamespaceError::IsADirectory(path.clone()));
        }
        if contents.len() > CONTENTS_BYTES_MAX {
            return Err(NamespaceError::ContentsTooLarge(contents.len()));
        }
        if self.nodes.len() >= NODES_MAX {
            return Err(NamespaceError::Full);
        }
        let acl = acl.unwrap_or_else(|| Arc::clone(&parent_node.acl));
        let stat = Stat {
            instance: self.next_instance,
            kind,
            ephemeral_owner,
            content_generation: 1,
            lock_generation: 0,
            acl_generation: 1,
            checksum: checksum(&contents),
            created_ms: now_ms,
            modified_ms: now_ms,
            contents_bytes: contents.len() as u64,
            children: 0,
        };
        self.next_instance += 1;
        if let Some(parent_node) = self.nodes.get_mut(&parent) {
            parent_node.stat.children += 1;
        }
        self.footprint_bytes += node_bytes(path, &contents, &acl);
        self.nodes.insert(path.clone(), Node { stat: stat.clone(), contents, acl });
        Ok((stat, vec![Change::ChildAdded { parent, path: path.clone() }]))
    }

    /// Deletes a node; a directory only when empty. With `instance`, only
    /// that instance (a handle's) is deleted.
    pub fn delete(&mut self, path: &Path, instance: Option<u64>) -> Result<Vec<Change>, NamespaceError> {
        let Some((parent, _)) = path.split() else { return Err(NamespaceError::Root) };
        let node = self.get_node(path, instance)?;
        if node.stat.children > 0 {
            return Err(NamespaceError::NotEmpty(path.clone()));
        }
        let instance = node.stat.instance;
        if let Some(removed) = self.nodes.remove(path) {
            self.footprint_bytes -= node_bytes(path, &removed.contents, &removed.acl);
        }
        if let Some(parent_node) = self.nodes.get_mut(&parent) {
            parent_node.stat.children -= 1;
        }
        Ok(vec![Change::ChildRemoved { parent, path: path.clone(), instance }])
    }

    /// Replaces a file's contents, only if its content generation is
    /// `if_generation` when given (compare-and-set).
    pub fn set_contents(
        &mut self,
        path: &Path,
        instance: Option<u64>,
        contents: Bytes,
        if_generation: Option<u64>,
        now_ms: u64,
    ) -> Result<(Stat, Vec<Change>), NamespaceError> {
        if contents.len() > CONTENTS_BYTES_MAX {
            return Err(NamespaceError::ContentsTooLarge(contents.len()));
        }
        let node = self.get_node(path, instance)?;
        if node.stat.kind != NodeKind::File {
            return Err(NamespaceError::IsADirectory(path.clone()));
        }
        if let Some(expected) = if_generation.filter(|&g| g != node.stat.content_generation) {
            return Err(NamespaceError::GenerationMismatch {
                path: path.clone(),
                expected,
                actual: node.stat.content_generation,
            });
        }
        let Some(node) = self.nodes.get_mut(path) else { return Err(NamespaceError::NotFound(path.clone())) };
        node.stat.content_generation += 1;
        node.stat.checksum = checksum(&contents);
        node.stat.contents_bytes = contents.len() as u64;
        node.stat.modified_ms = now_ms;
        self.footprint_bytes = self.footprint_bytes - node.contents.len() + contents.len();
        node.contents = contents;
        Ok((node.stat.clone(), vec![Change::ContentsModified { path: path.clone() }]))
    }

    /// A file's contents and the node's stat.
    pub fn get_contents_and_stat(&self, path: &Path, instance: Option<u64>) -> Result<(Bytes, Stat), NamespaceError> {
        let node = self.get_node(path, instance)?;
        if node.stat.kind != NodeKind::File {
            return Err(NamespaceError::IsADirectory(path.clone()));
        }
        Ok((node.contents.clone(), node.stat.clone()))
    }

    /// A node's stat.
    pub fn stat(&self, path: &Path, instance: Option<u64>) -> Result<Stat, NamespaceError> {
        Ok(self.get_node(path, instance)?.stat.clone())
    }

    /// A node's ACL.
    pub fn acl(&self, path: &Path, instance: Option<u64>) -> Result<&Arc<Acl>, NamespaceError> {
        Ok(&self.get_node(path, instance)?.acl)
    }

    /// Replaces a node's ACL, only if its ACL generation is `if_generation`
    /// when given; the generation moves on by one.
    pub fn set_acl(&mut self, path: &Path, instance: Option<u64>, acl: Acl, if_generation: Option<u64>) -> Result<Stat, NamespaceError> {
        let node = self.get_node(path, instance)?;
        if let Some(expected) = if_generation.filter(|&g| g != node.stat.acl_generation) {
            return Err(NamespaceError::AclGenerationMismatch { path: path.clone(), expected, actual: node.stat.acl_generation });
        }
        if node.stat.acl_generation >= COUNTER_MAX {
            return Err(NamespaceError::Full);
        }
        let Some(node) = self.nodes.get_mut(path) else { return Err(NamespaceError::NotFound(path.clone())) };
        self.footprint_bytes = self.footprint_bytes - node.acl.footprint_bytes() + acl.footprint_bytes();
        node.acl = Arc::new(acl);
        node.stat.acl_generation += 1;
        Ok(node.stat.clone())
    }

    /// The names of a directory's children, in order, and its stat.
    pub fn read_dir(&self, path: &Path, instance: Option<u64>) -> Result<(Vec<String>, Stat), NamespaceError> {
        self.read_dir_page(path, instance, "", usize::MAX).map(|(names, stat, _)| (names, stat))
    }

    /// A page of a directory's children: at most `limit` names, in order,
    /// of those after `after` (all if empty); its stat; and whether more
    /// children follow.
    pub fn read_dir_page(&self, path: &Path, instance: Option<u64>, after: &str, limit: usize) -> Result<(Vec<String>, Stat, bool), NamespaceError> {
        use std::ops::Bound;
        let node = self.get_node(path, instance)?;
        if node.stat.kind != NodeKind::Directory {
            return Err(NamespaceError::NotADirectory(path.clone()));
        }
        let prefix = if path.is_root() { "/".to_string() } else { format!("{path}/") };
        let start = if after.is_empty() { Bound::Included(Path(prefix.clone())) } else { Bound::Excluded(Path(format!("{prefix}{after}"))) };
        let mut children = self
            .nodes
            .range((start, Bound::Unbounded))
            .map(|(child, _)| child.as_str())
            .take_while(|child| child.starts_with(&prefix))
            .map(|child| &child[prefix.len()..])
            // Past `after`'s own subtree (`after/...` sorts right after it).
            .filter(|rest| !rest.is_empty() && !rest.contains('/'));
        let names: Vec<String> = children.by_ref().take(limit).map(str::to_string).collect();
        let more = children.next().is_some();
        Ok((names, node.stat.clone(), more))
    }

    /// Every ephemeral node `session` owns, deepest first, so that deleting
    /// them in this order never meets a non-empty directory of its own.
    pub fn ephemerals_of(&self, session: SessionId) -> Vec<Path> {
        let mut paths: Vec<Path> = self
            .nodes
            .iter()
            .filter(|(_, node)| node.stat.ephemeral_owner == Some(session))
            .map(|(path, _)| path.clone())
            .collect();
        paths.reverse();
        paths
    }

    /// A path's child, for callers that hold a validated directory path.
    pub fn child_path(directory: &Path, name: &str) -> Result<Path, PathError> {
        Path::parse(directory.child(name).as_str())
    }

    fn get_node(&self, path: &Path, instance: Option<u64>) -> Result<&Node, NamespaceError> {
        let node = self.nodes.get(path).ok_or_else(|| NamespaceError::NotFound(path.clone()))?;
        if let Some(expected) = instance.filter(|&i| i != node.stat.instance) {
            return Err(NamespaceError::InstanceMismatch { path: path.clone(), expected, actual: node.stat.instance });
        }
        Ok(node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(text: &str) -> Path {
        Path::parse(text).expect("valid path")
    }

    #[test]
    fn paths_are_validated() {
        assert_eq!(path("/").as_str(), "/");
        assert_eq!(path("/ls/cell/config").as_str(), "/ls/cell/config");
        let bad: [(&str, fn(&PathError) -> bool); 8] = [
            ("relative", |e| matches!(e, PathError::NotAbsolute(_))),
            ("", |e| matches!(e, PathError::NotAbsolute(_))),
            ("/a//b", |e| matches!(e, PathError::BadComponent(_))),
            ("/a/", |e| matches!(e, PathError::BadComponent(_))),
            ("/a/./b", |e| matches!(e, PathError::BadComponent(_))),
            ("/a/../b", |e| matches!(e, PathError::BadComponent(_))),
            ("/a\u{0}b", |e| matches!(e, PathError::ControlCharacter(_))),
            ("/a\nb", |e| matches!(e, PathError::ControlCharacter(_))),
        ];
        for (text, expected) in bad {
            let error = Path::parse(text).expect_err(text);
            assert!(expected(&error), "{text:?} gave {error:?}");
        }
        let long = format!("/{}", "x".repeat(PATH_BYTES_MAX));
        assert!(matches!(Path::parse(&long), Err(PathError::TooLong(_))));
        let long_component = format!("/{}", "x".repeat(COMPONENT_BYTES_MAX + 1));
        assert!(matches!(Path::parse(&long_component), Err(PathError::TooLong(_))));
        let deep = "/d".repeat(PATH_DEPTH_MAX + 1);
        assert!(matches!(Path::parse(&deep), Err(PathError::TooDeep(_))));
        assert!(Path::parse(&"/d".repeat(PATH_DEPTH_MAX)).is_ok());
    }

    #[test]
    fn split_gives_parent_and_name() {
        assert_eq!(path("/a").split(), Some((Path::root(), "a")));
        assert_eq!(path("/a/b/c").split(), Some((path("/a/b"), "c")));
        assert_eq!(Path::root().split(), None);
    }

    #[test]
    fn create_needs_an_existing_parent_directory_and_a_free_name() {
        let mut ns = Namespace::new();
        let (stat, changes) =
            ns.create(&path("/ls"), NodeKind::Directory, None, Bytes::new(), None, 5).expect("created");
        assert_eq!(stat.instance, 2);
        assert_eq!(changes, vec![Change::ChildAdded { parent: Path::root(), path: path("/ls") }]);
        assert_eq!(
            ns.create(&path("/ls"), NodeKind::File, None, Bytes::new(), None, 6),
            Err(NamespaceError::AlreadyExists(path("/ls")))
        );
        assert_eq!(
            ns.create(&path("/nope/x"), NodeKind::File, None, Bytes::new(), None, 6),
            Err(NamespaceError::NotFound(path("/nope")))
        );
        ns.create(&path("/ls/f"), NodeKind::File, None, Bytes::from_static(b"v1"), None, 7).expect("created");
        assert_eq!(
            ns.create(&path("/ls/f/x"), NodeKind::File, None, Bytes::new(), None, 8),
            Err(NamespaceError::NotADirectory(path("/ls/f")))
        );
        assert_eq!(ns.create(&Path::root(), NodeKind::Directory, None, Bytes::new(), None, 8), Err(NamespaceError::Root));
        let too_big = Bytes::from(vec![0u8; CONTENTS_BYTES_MAX + 1]);
        assert_eq!(
            ns.create(&path("/ls/big"), NodeKind::File, None, too_big, None, 8),
            Err(NamespaceError::ContentsTooLarge(CONTENTS_BYTES_MAX + 1))
        );
    }

    #[test]
    fn set_contents_bumps_the_generation_and_honours_compare_and_set() {
        let mut ns = Namespace::new();
        ns.create(&path("/f"), NodeKind::File, None, Bytes::from_static(b"a"), None, 1).expect("created");
        let (stat, changes) =
            ns.set_contents(&path("/f"), None, Bytes::from_static(b"bb"), Some(1), 2).expect("generation 1 matches");
        assert_eq!((stat.content_generation, stat.contents_bytes, stat.modified_ms), (2, 2, 2));
        assert_eq!(stat.checksum, checksum(b"bb"));
        assert_eq!(changes, vec![Change::ContentsModified { path: path("/f") }]);
        assert_eq!(
            ns.set_contents(&path("/f"), None, Bytes::from_static(b"c"), Some(1), 3),
            Err(NamespaceError::GenerationMismatch { path: path("/f"), expected: 1, actual: 2 })
        );
        let (contents, stat) = ns.get_contents_and_stat(&path("/f"), None).expect("exists");
        assert_eq!((&contents[..], stat.content_generation), (&b"bb"[..], 2));
        assert_eq!(
            ns.set_contents(&Path::root(), None, Bytes::new(), None, 3),
            Err(NamespaceError::IsADirectory(Path::root()))
        );
    }

    #[test]
    fn a_recreated_node_is_a_new_instance_and_old_handles_fail() {
        let mut ns = Namespace::new();
        let (first, _) = ns.create(&path("/f"), NodeKind::File, None, Bytes::new(), None, 1).expect("created");
        let changes = ns.delete(&path("/f"), Some(first.instance)).expect("deleted");
        assert_eq!(
            changes,
            vec![Change::ChildRemoved { parent: Path::root(), path: path("/f"), instance: first.instance }]
        );
        let (second, _) = ns.create(&path("/f"), NodeKind::File, None, Bytes::new(), None, 2).expect("recreated");
        assert_ne!(first.instance, second.instance);
        assert_eq!(
            ns.stat(&path("/f"), Some(first.instance)),
            Err(NamespaceError::InstanceMismatch { path: path("/f"), expected: first.instance, actual: second.instance })
        );
    }

    #[test]
    fn directories_are_deleted_only_when_empty_and_list_their_children_in_order() {
        let mut ns = Namespace::new();
        ns.create(&path("/d"), NodeKind::Directory, None, Bytes::new(), None, 1).expect("created");
        for name in ["b", "a", "c"] {
            ns.create(&path(&format!("/d/{name}")), NodeKind::File, None, Bytes::new(), None, 1).expect("created");
        }
        ns.create(&path("/d/c2"), NodeKind::Directory, None, Bytes::new(), None, 1).expect("created");
        ns.create(&path("/d/c2/deep"), NodeKind::File, None, Bytes::new(), None, 1).expect("created");
        ns.create(&path("/d-sibling"), NodeKind::File, None, Bytes::new(), None, 1).expect("created");
        let (names, stat) = ns.read_dir(&path("/d"), None).expect("a directory");
        assert_eq!(names, vec!["a", "b", "c", "c2"]);
        assert_eq!(stat.children, 4);
        assert_eq!(ns.read_dir(&Path::root(), None).expect("root").0, vec!["d", "d-sibling"]);
        assert_eq!(ns.delete(&path("/d"), None), Err(NamespaceError::NotEmpty(path("/d"))));
        assert_eq!(ns.delete(&Path::root(), None), Err(NamespaceError::Root));
        assert_eq!(ns.delete(&path("/missing"), None), Err(NamespaceError::NotFound(path("/missing"))));
    }

    /// A directory of 100,000 children (some with subtrees, and siblings
    /// whose names sort around `/`) is listed completely, in order, once
    /// each, a page at a time; a child added behind the pages is not
    /// listed, one added ahead is, one removed ahead is not.
    #[test]
    fn a_large_directory_is_listed_completely_a_page_at_a_time() {
        let mut ns = Namespace::new();
        ns.create(&path("/d"), NodeKind::Directory, None, Bytes::new(), None, 1).expect("created");
        ns.create(&path("/d-after"), NodeKind::File, None, Bytes::new(), None, 1).expect("created");
        let mut expected = Vec::new();
        for i in 0..100_000u32 {
            let name = format!("n{i:06}");
            let kind = if i % 1000 == 0 { NodeKind::Directory } else { NodeKind::File };
            ns.create(&path(&format!("/d/{name}")), kind, None, Bytes::new(), None, 1).expect("created");
            if kind == NodeKind::Directory {
                ns.create(&path(&format!("/d/{name}/inner")), NodeKind::File, None, Bytes::new(), None, 1).expect("created");
                // Sorts between `name` and `name/inner`.
                ns.create(&path(&format!("/d/{name}-x")), NodeKind::File, None, Bytes::new(), None, 1).expect("created");
                expected.push(name.clone());
                expected.push(format!("{name}-x"));
            } else {
                expected.push(name);
            }
        }
        expected.sort();
        let mut listed = Vec::new();
        let mut after = String::new();
        let mut pages = 0;
        loop {
            let (names, stat, more) = ns.read_dir_page(&path("/d"), None, &after, 10_000).expect("a page");
            assert!(names.len() <= 10_000);
            if pages == 0 {
                assert_eq!(stat.children as usize, expected.len());
            }
            pages += 1;
            if pages == 3 {
                // Behind the pages: not listed; ahead: listed; removed
                // ahead: not listed.
                ns.create(&path("/d/a-behind"), NodeKind::File, None, Bytes::new(), None, 2).expect("created");
                ns.create(&path("/d/z-ahead"), NodeKind::File, None, Bytes::new(), None, 2).expect("created");
                ns.delete(&path("/d/n099999"), None).expect("deleted");
                expected.retain(|name| name != "n099999");
                expected.push("z-ahead".into());
            }
            listed.extend(names.iter().cloned());
            if !more {
                break;
            }
            after = names.last().cloned().expect("a page that says more has names");
        }
        assert_eq!(listed, expected, "every child once, in order");
        assert!(pages >= 10, "{pages} pages");
        let (all, _) = ns.read_dir(&path("/d"), None).expect("all at once");
        assert_eq!(all.len(), expected.len() + 1, "with the one added behind the pages");
    }

    #[test]
    fn ephemerals_of_a_session_come_deepest_first() {
        let mut ns = Namespace::new();
        ns.create(&path("/e"), NodeKind::Directory, Some(7), Bytes::new(), None, 1).expect("created");
        ns.create(&path("/e/x"), NodeKind::File, Some(7), Bytes::new(), None, 1).expect("created");
        ns.create(&path("/other"), NodeKind::File, Some(8), Bytes::new(), None, 1).expect("created");
        ns.create(&path("/permanent"), NodeKind::File, None, Bytes::new(), None, 1).expect("created");
        let paths = ns.ephemerals_of(7);
        assert_eq!(paths, vec![path("/e/x"), path("/e")]);
        for path in &paths {
            ns.delete(path, None).expect("deepest first never meets a non-empty directory");
        }
        assert_eq!(ns.len(), 3);
    }
}
