//! Layer 6, **snapshot**: stores and tables to disk and back.
//!
//! [`Store::save`](crate::Store::save) writes every table of a store (and its GC roots)
//! to one file; [`Store::load`](crate::Store::load) rebuilds an equal store in any
//! process that knows the same types: every `#[derive(Pooled)]` type without generic
//! parameters by its name, others listed in a [`TypeRegistry`]. [`save_table`] and [`load_table`] do the same for one table, and
//! the neural layer's checkpoints (`NeuralGraph::save`) write a graph's two tables with
//! two sections of simulation state that this layer frames (`graph.rs`). Every
//! handle means after a load what it meant before: a live handle resolves to an equal
//! object, a stale one stays stale, and the next inserts return the same handles as they
//! would have without the save and load (the slot table is rebuilt with each slot's
//! version, and inserts that need a vacant slot take the lowest; see `table/persist.rs`).
//!
//! The format (version 4, `docs/FORMAT.md`; version 1 to 3 files still load): a preamble
//! (magic, version, byte order), then
//! length-prefixed sections, each with a CRC-32 of its bytes, then a footer with the
//! CRC-32 of the whole file. Per table: its type name, schema fingerprint, element size
//! and alignment, slot table, chunk map, and objects, encoded by the type's
//! [`Codec`] (declared with the type in the `pooled` layer, applied to tables by
//! `codec.rs`): `Pod` types as raw bytes read straight into chunk memory, others through
//! serde and bincode 2.
//!
//! Invariants kept here:
//! - saving to a path is atomic and durable: the file is written to `<path>.tmp`, fsynced,
//!   renamed over `<path>`, and the directory fsynced; any error on the way, fsync
//!   included, is returned and leaves the previous file as it was;
//! - loading validates every byte it uses (magic, version, lengths, checksums, type names
//!   and schemas, the slot table's consistency) and builds into new tables that the caller
//!   sees only when the whole file has been read and checked; a bad file is a typed
//!   [`SnapshotError`] (or [`Error::SchemaMismatch`]), never a panic;
//! - the loaded store keeps the saved GC roots; its policies (GC, defragmentation,
//!   dangling handles) are the defaults, as a new store's, and an open incremental GC
//!   cycle is not saved.
//!
//! This layer has no unsafe code: `lib.rs` declares it `#[forbid(unsafe_code)]`.
//!
//! ```
//! use neurostore::{Neuron, Store, Synapse, neural::NeuronParams, snapshot::TypeRegistry};
//!
//! let mut store = Store::new();
//! let n = store.insert(Neuron::new(&NeuronParams::default()));
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("net.nsnap");
//! let report = store.save(&path)?;
//! assert_eq!(report.objects, 1);
//!
//! // Derived types are known by name; a registry lists generic types and hand-written
//! // impls (listing a derived one as well changes nothing).
//! let mut registry = TypeRegistry::new();
//! registry.register::<Neuron>()?.register::<Synapse>()?;
//! let loaded = Store::load(&path, &registry)?;
//! assert_eq!(loaded.get(n), store.get(n));
//! assert_eq!(Store::load(&path, &TypeRegistry::new())?.get(n), store.get(n));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod atomic;
mod codec;
mod format;
mod graph;
mod input;
mod inspect;
mod registry;

use std::any::TypeId;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crate::pooled::{Codec, Encoding, MAX_DECODED_OBJECT_BYTES};
pub use atomic::AtomicFile;
pub use format::{MAGIC, Progress, ProgressFn, VERSION};
pub(crate) use graph::{GraphSections, GraphState, RingImage};
use input::{Input, Stream};
pub use inspect::{GraphInfo, SectionInfo, SnapshotInfo, TableInfo, inspect, inspect_file};
pub use registry::TypeRegistry;
#[doc(hidden)]
pub use registry::{Registration, Unlistable, ViaRegistry};

use crate::erased::{ErasedTable, TableInternals, Tables, TypeMap};
use crate::error::{Error, SnapshotError};
use crate::gc::GcOps;
use crate::pool::HierarchicalPool;
use crate::pooled::{AnyHandle, Pooled, Retention, Trace};
use crate::table::{GenerationImage, SlotImage, Table, TableImage, default_pool};
use codec::{Decoder, Encoded, decode_pod, decode_serde};
use format::{FieldReader, Fields, Reader, SECTION_OVERHEAD, Writer};

/// What a save wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotReport {
    /// Bytes of the file.
    pub bytes: u64,
    /// Tables written.
    pub tables: usize,
    /// Objects written, all tables together.
    pub objects: u64,
    /// Bytes of object data (the objects sections' bodies).
    pub object_bytes: u64,
    /// Wall time of the whole save (for a path: fsyncs and rename included).
    pub duration: Duration,
}

impl SnapshotReport {
    /// File bytes per second.
    pub fn bytes_per_second(&self) -> f64 {
        self.bytes as f64 / self.duration.as_secs_f64().max(1e-9)
    }
}

/// What a file holds: a whole store, one table, or a neural graph checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Content {
    /// A [`Store`](crate::Store): its tables and GC roots.
    Store,
    /// One [`Table`].
    Table,
    /// A [`NeuralGraph`](crate::neural::NeuralGraph) checkpoint: its neuron and synapse
    /// tables and the simulation state around them.
    Graph,
}

impl Content {
    fn code(self) -> u8 {
        match self {
            Content::Store => 0,
            Content::Table => 1,
            Content::Graph => 2,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Content::Store => "a store",
            Content::Table => "a single table",
            Content::Graph => "a neural graph checkpoint",
        }
    }
}

/// What follows a file's tables.
enum Trailer<'a> {
    /// Nothing (a single table).
    None,
    /// A store's ROOT body.
    Roots(&'a [u8]),
    /// A graph checkpoint's sections.
    Graph(&'a GraphSections<'a>),
}

impl Trailer<'_> {
    fn file_len(&self) -> u64 {
        match self {
            Trailer::None => 0,
            Trailer::Roots(body) => SECTION_OVERHEAD + body.len() as u64,
            Trailer::Graph(sections) => sections.file_len(),
        }
    }

    fn write(&self, writer: &mut Writer<'_>) -> Result<(), Error> {
        match self {
            Trailer::None => Ok(()),
            Trailer::Roots(body) => writer.section_bytes(format::ROOT, body),
            Trailer::Graph(sections) => sections.write(writer),
        }
    }
}

/// What a graph checkpoint holds, as read: its two tables and the sections after them.
pub(crate) struct GraphParts<A, B> {
    pub tables: (Table<A>, Table<B>),
    pub state: GraphState,
    pub ring: RingImage<Vec<f32>>,
}

/// Saves to `path` atomically and durably: `write` fills an [`AtomicFile`], which is
/// committed only if it succeeds. The report's duration covers the whole save.
pub(crate) fn save_to_path(
    path: impl AsRef<Path>,
    write: impl FnOnce(&mut AtomicFile) -> Result<SnapshotReport, Error>,
) -> Result<SnapshotReport, Error> {
    let started = Instant::now();
    let mut file = AtomicFile::create(path)?;
    let mut report = write(&mut file)?;
    file.commit()?;
    report.duration = started.elapsed();
    Ok(report)
}

/// Options for saving and loading: a progress callback and, for loads, the pool that
/// the new tables take their memory from (the default pool otherwise).
///
/// ```
/// use neurostore::{Neuron, Store, neural::NeuronParams, snapshot::{Options, TypeRegistry}};
///
/// let mut store = Store::new();
/// store.register::<Neuron>()?;
/// store.insert(Neuron::new(&NeuronParams::default()));
/// let mut file = Vec::new();
/// let mut seen = Vec::new();
/// store.save_to_with(&mut file, &mut Options::new().progress(|p| seen.push(p)))?;
/// assert_eq!(seen.last().map(|p| (p.done, p.total)), Some((file.len() as u64, file.len() as u64)));
///
/// let registry = TypeRegistry::new().with::<Neuron>()?;
/// let loaded = Store::load_from_with(&file[..], &registry, &mut Options::new())?;
/// assert_eq!(loaded.table::<Neuron>().map(|t| t.len()), Some(1));
/// # Ok::<(), neurostore::Error>(())
/// ```
#[derive(Default)]
pub struct Options<'a> {
    progress: Option<Box<ProgressFn<'a>>>,
    pool: Option<Arc<HierarchicalPool>>,
}

impl std::fmt::Debug for Options<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("progress", &self.progress.is_some())
            .field("pool", &self.pool.is_some())
            .finish()
    }
}

impl<'a> Options<'a> {
    /// No progress callback, the default pool.
    pub fn new() -> Self {
        Options::default()
    }

    /// Calls `f` as the save or load moves on (about once per MiB, and at the end).
    pub fn progress(mut self, f: impl FnMut(Progress) + 'a) -> Self {
        self.progress = Some(Box::new(f));
        self
    }

    /// Loaded tables take their chunks from `pool`.
    pub fn pool(mut self, pool: Arc<HierarchicalPool>) -> Self {
        self.pool = Some(pool);
        self
    }

    /// The callback, with its lifetime shortened to this borrow.
    fn progress_fn(&mut self) -> Option<&mut ProgressFn<'_>> {
        match self.progress.as_deref_mut() {
            Some(p) => Some(p),
            None => None,
        }
    }

    pub(crate) fn pool_or_default(&self) -> Arc<HierarchicalPool> {
        self.pool.clone().unwrap_or_else(default_pool)
    }

    /// Writes a store as a snapshot to `out`: its tables by type, how to save each
    /// (`persist`, kept by the store for every registered type) and its explicit roots
    /// with their counts. [`Store::save_to_with`](crate::Store::save_to_with) calls it.
    pub(crate) fn save_store_parts_to(
        &mut self,
        tables: &Tables,
        persist: &TypeMap<StoreTableOps>,
        mut counts: Vec<(AnyHandle, usize)>,
        out: impl Write,
    ) -> Result<SnapshotReport, Error> {
        let started = Instant::now();
        let mut prepared = Vec::new();
        for (id, table) in tables {
            match persist.get(id) {
                Some(ops) => prepared.push((ops.prepare)(table.view())?),
                // A table that never held an object has no state to lose.
                None if table.slot_count() <= 1 => {}
                None => {
                    return Err(SnapshotError::Unregistered {
                        type_name: table.type_name().to_owned(),
                    }
                    .into());
                }
            }
        }
        prepared.sort_by(|a, b| a.header().type_name.cmp(&b.header().type_name));
        if let Some(w) = prepared
            .windows(2)
            .find(|w| w[0].header().type_name == w[1].header().type_name)
        {
            return Err(SnapshotError::DuplicateType {
                type_name: w[0].header().type_name.clone(),
            }
            .into());
        }
        let names: HashMap<TypeId, &str> = persist
            .iter()
            .map(|(id, ops)| (*id, ops.type_name))
            .collect();
        let mut roots = Fields::default();
        counts.sort_by_key(|(h, _)| (h.type_name(), h.to_bits()));
        roots.u32(counts.len() as u32);
        for (h, n) in counts {
            let name = names
                .get(&h.type_id())
                .ok_or_else(|| SnapshotError::Unregistered {
                    type_name: h.type_name().to_owned(),
                })?;
            roots.str(name).u64(h.to_bits()).u64(n as u64);
        }
        let tables: Vec<&dyn PreparedTable> = prepared.iter().map(|p| &**p).collect();
        let mut report = self.write(Content::Store, &tables, Trailer::Roots(&roots.0), out)?;
        report.duration = started.elapsed();
        Ok(report)
    }

    /// Reads a store's snapshot from `input`: each table with what the store keeps beside
    /// it, and the explicit roots with their counts, for
    /// [`Store::load_from_with`](crate::Store::load_from_with) to put together.
    pub(crate) fn load_store_parts_from(
        &mut self,
        input: impl Read,
        registry: &TypeRegistry,
    ) -> Result<StoreParts, Error> {
        self.load_store_parts(&mut Stream(input), registry)
    }

    /// As [`load_store_parts_from`](Self::load_store_parts_from) from the file at `path`,
    /// whose large bodies are read on every thread.
    pub(crate) fn load_store_parts_at(
        &mut self,
        path: &Path,
        registry: &TypeRegistry,
    ) -> Result<StoreParts, Error> {
        self.load_store_parts(&mut *input::open(path)?, registry)
    }

    fn load_store_parts(
        &mut self,
        input: &mut dyn Input,
        registry: &TypeRegistry,
    ) -> Result<StoreParts, Error> {
        let pool = self.pool_or_default();
        let mut reader = Reader::new(input, self.progress_fn());
        let head = read_head(&mut reader)?;
        if head.content != Content::Store {
            return Err(SnapshotError::WrongContent {
                expected: Content::Store.describe().to_owned(),
                found: head.content.describe().to_owned(),
            }
            .into());
        }
        // The count is the file's word: the list grows with the tables actually read, so
        // a count that the sections do not bear out is a refusal, not an allocation.
        let mut tables = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..head.tables {
            let header = read_table_header(&mut reader)?;
            if !seen.insert(header.type_name.clone()) {
                return Err(SnapshotError::DuplicateType {
                    type_name: header.type_name,
                }
                .into());
            }
            let entry = registry.entry(header.type_name.as_str()).ok_or_else(|| {
                SnapshotError::UnknownType {
                    type_name: header.type_name.clone(),
                }
            })?;
            tables.push((entry.load)(&mut reader, &header, &pool)?);
        }
        let (start, listed) = read_roots(&mut reader)?;
        let mut roots = Vec::with_capacity(listed.len());
        for (name, bits, n) in listed {
            let entry = registry
                .entry(name.as_str())
                .filter(|_| seen.contains(&name))
                .ok_or_else(|| {
                    reader.malformed(
                        start,
                        format!("a root names `{name}`, which has no table in the file"),
                    )
                })?;
            let n = usize::try_from(n)
                .map_err(|_| reader.malformed(start, "a root count overflows"))?;
            roots.push(((entry.any_handle)(bits), n));
        }
        finish(&mut reader, &head)?;
        Ok(StoreParts {
            pool,
            tables,
            roots,
        })
    }

    /// [`save_table`] with these options.
    ///
    /// # Errors
    /// As [`save_table`].
    pub fn save_table<T: Pooled>(
        &mut self,
        table: &Table<T>,
        path: impl AsRef<Path>,
    ) -> Result<SnapshotReport, Error> {
        save_to_path(path, |file| self.save_table_to(table, file))
    }

    /// [`save_table_to`] with these options.
    ///
    /// # Errors
    /// As [`save_table_to`].
    pub fn save_table_to<T: Pooled>(
        &mut self,
        table: &Table<T>,
        out: impl Write,
    ) -> Result<SnapshotReport, Error> {
        let started = Instant::now();
        let prepared = Prepared::new(table)?;
        let mut report = self.write(Content::Table, &[&prepared], Trailer::None, out)?;
        report.duration = started.elapsed();
        Ok(report)
    }

    /// [`load_table`] with these options.
    ///
    /// # Errors
    /// As [`load_table`].
    pub fn load_table<T: Pooled>(&mut self, path: impl AsRef<Path>) -> Result<Table<T>, Error> {
        self.load_table_input(&mut *input::open(path.as_ref())?)
    }

    /// [`load_table_from`] with these options.
    ///
    /// # Errors
    /// As [`load_table_from`].
    pub fn load_table_from<T: Pooled>(&mut self, input: impl Read) -> Result<Table<T>, Error> {
        self.load_table_input(&mut Stream(input))
    }

    fn load_table_input<T: Pooled>(&mut self, input: &mut dyn Input) -> Result<Table<T>, Error> {
        let pool = self.pool_or_default();
        let mut reader = Reader::new(input, self.progress_fn());
        let head = read_head(&mut reader)?;
        if head.content != Content::Table || head.tables != 1 {
            return Err(SnapshotError::WrongContent {
                expected: Content::Table.describe().to_owned(),
                found: head.content.describe().to_owned(),
            }
            .into());
        }
        let table = read_named_table::<T>(&mut reader, &pool)?;
        finish(&mut reader, &head)?;
        Ok(table)
    }

    /// Writes a graph checkpoint to `out`: its neuron and synapse tables (in that order,
    /// ascending type names), then `sections`.
    pub(crate) fn save_graph_to<A: Pooled, B: Pooled>(
        &mut self,
        tables: (&Table<A>, &Table<B>),
        sections: &GraphSections<'_>,
        out: impl Write,
    ) -> Result<SnapshotReport, Error> {
        let started = Instant::now();
        let first = Prepared::new(tables.0)?;
        let second = Prepared::new(tables.1)?;
        let mut report = self.write(
            Content::Graph,
            &[&first, &second],
            Trailer::Graph(sections),
            out,
        )?;
        report.duration = started.elapsed();
        Ok(report)
    }

    /// Reads a graph checkpoint written by [`save_graph_to`](Self::save_graph_to) with
    /// tables of `A` and `B`: a file of other content or other tables is
    /// [`SnapshotError::WrongContent`].
    pub(crate) fn load_graph_from<A: Pooled, B: Pooled>(
        &mut self,
        input: impl Read,
    ) -> Result<GraphParts<A, B>, Error> {
        self.load_graph(&mut Stream(input))
    }

    /// As [`load_graph_from`](Self::load_graph_from) from the file at `path`, whose large
    /// bodies are read on every thread.
    pub(crate) fn load_graph_at<A: Pooled, B: Pooled>(
        &mut self,
        path: &Path,
    ) -> Result<GraphParts<A, B>, Error> {
        self.load_graph(&mut *input::open(path)?)
    }

    fn load_graph<A: Pooled, B: Pooled>(
        &mut self,
        input: &mut dyn Input,
    ) -> Result<GraphParts<A, B>, Error> {
        let pool = self.pool_or_default();
        let mut reader = Reader::new(input, self.progress_fn());
        let head = read_head(&mut reader)?;
        if head.content != Content::Graph || head.tables != 2 {
            return Err(SnapshotError::WrongContent {
                expected: Content::Graph.describe().to_owned(),
                found: head.content.describe().to_owned(),
            }
            .into());
        }
        let first = read_named_table::<A>(&mut reader, &pool)?;
        let second = read_named_table::<B>(&mut reader, &pool)?;
        let state = GraphState::read(&mut reader)?;
        let ring = RingImage::read(&mut reader)?;
        finish(&mut reader, &head)?;
        Ok(GraphParts {
            tables: (first, second),
            state,
            ring,
        })
    }

    /// Writes a whole file: preamble, header, tables, what follows them, footer.
    fn write(
        &mut self,
        content: Content,
        tables: &[&dyn PreparedTable],
        trailer: Trailer<'_>,
        mut out: impl Write,
    ) -> Result<SnapshotReport, Error> {
        let mut head = Fields::default();
        head.str(env!("CARGO_PKG_VERSION"))
            .u8(content.code())
            .u32(tables.len() as u32);
        let head_len = head.0.len() as u64 + 8;
        let total = format::PREAMBLE_LEN
            + SECTION_OVERHEAD
            + head_len
            + tables.iter().map(|t| t.file_len()).sum::<u64>()
            + trailer.file_len()
            + format::FOOTER_LEN;
        head.u64(total);
        let mut writer = Writer::new(&mut out, total, self.progress_fn());
        writer.preamble()?;
        writer.section_bytes(format::HEAD, &head.0)?;
        for t in tables {
            t.write(&mut writer)?;
        }
        trailer.write(&mut writer)?;
        let bytes = writer.footer()?;
        debug_assert_eq!(bytes, total);
        Ok(SnapshotReport {
            bytes,
            tables: tables.len(),
            objects: tables.iter().map(|t| t.header().live).sum(),
            object_bytes: tables.iter().map(|t| t.header().objects_len).sum(),
            duration: Duration::ZERO,
        })
    }
}

/// The fields of a file's HEAD section.
#[derive(Clone, Debug)]
pub(crate) struct Head {
    /// The file's format version.
    pub format_version: u32,
    pub crate_version: String,
    pub content: Content,
    pub tables: u32,
    pub total: u64,
}

pub(crate) fn read_head(reader: &mut Reader<'_>) -> Result<Head, Error> {
    let format_version = reader.preamble()?;
    let start = reader.open(format::HEAD)?;
    if start.len > 1 << 16 {
        return Err(reader.malformed(start, format!("a {}-byte header is too long", start.len)));
    }
    let body = reader.rest_of_body()?;
    reader.close()?;
    let mut f = FieldReader::new(&body, start);
    let crate_version = f.str("the crate version")?;
    let content = match f.u8("the content")? {
        0 => Content::Store,
        1 => Content::Table,
        2 => Content::Graph,
        other => return Err(reader.malformed(start, format!("unknown content code {other}"))),
    };
    let tables = f.u32("the table count")?;
    let total = f.u64("the file length")?;
    f.end()?;
    reader.set_total(total);
    Ok(Head {
        format_version,
        crate_version,
        content,
        tables,
        total,
    })
}

/// Reads the footer; the file must be as long as its header said.
pub(crate) fn finish(reader: &mut Reader<'_>, head: &Head) -> Result<u64, Error> {
    let bytes = reader.footer()?;
    if bytes != head.total {
        return Err(SnapshotError::Malformed {
            section: "HEAD".to_owned(),
            offset: format::PREAMBLE_LEN,
            message: format!(
                "the header gives a {}-byte file, but it has {bytes} bytes",
                head.total
            ),
        }
        .into());
    }
    Ok(bytes)
}

/// A saved root: its type name, handle bits and count.
pub(crate) type SavedRoot = (String, u64, u64);

/// Reads the ROOT section.
pub(crate) fn read_roots(
    reader: &mut Reader<'_>,
) -> Result<(format::SectionStart, Vec<SavedRoot>), Error> {
    let start = reader.open(format::ROOT)?;
    let body = reader.rest_of_body()?;
    reader.close()?;
    let mut fields = FieldReader::new(&body, start);
    let count = fields.u32("the root count")?;
    let mut roots = Vec::new();
    for _ in 0..count {
        let name = fields.str("a root's type name")?;
        let bits = fields.u64("a root's handle")?;
        let n = fields.u64("a root's count")?;
        roots.push((name, bits, n));
    }
    fields.end()?;
    Ok((start, roots))
}

/// Opens a table's OBJS section, which must be as long as its header says.
pub(crate) fn open_objects(reader: &mut Reader<'_>, header: &TableHeader) -> Result<(), Error> {
    let start = reader.open(format::OBJS)?;
    if start.len != header.objects_len {
        return Err(reader.malformed(
            start,
            format!(
                "the header gives {} bytes of objects, the section {}",
                header.objects_len, start.len
            ),
        ));
    }
    Ok(())
}

/// The fields of a TABL section.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TableHeader {
    pub type_name: String,
    pub schema: u64,
    pub element_size: u64,
    pub element_align: u64,
    pub encoding: Encoding,
    pub retention: Retention,
    pub per_chunk: u32,
    pub chunk_count: u32,
    pub slot_count: u32,
    pub live: u64,
    pub objects_len: u64,
}

impl TableHeader {
    fn fields(&self) -> Fields {
        let mut f = Fields::default();
        f.str(&self.type_name)
            .u64(self.schema)
            .u64(self.element_size)
            .u64(self.element_align)
            .u8(self.encoding.code())
            .u8(match self.retention {
                Retention::Manual => 0,
                Retention::Traced => 1,
            })
            .u32(self.per_chunk)
            .u32(self.chunk_count)
            .u32(self.slot_count)
            .u64(self.live)
            .u64(self.objects_len);
        f
    }

    fn vacant(&self) -> u64 {
        u64::from(self.slot_count) - 1 - self.live
    }

    /// Bytes of a SLOT body written as plain records.
    fn slot_records_len(&self) -> u64 {
        1 + u64::from(self.slot_count) * 8
    }

    /// Bytes of a FREE body: the chunk-presence bitmap, after the list of vacant slots
    /// in files before version 3 (`lists_vacant`).
    fn free_len(&self, lists_vacant: bool) -> u64 {
        let list = if lists_vacant { self.vacant() * 4 } else { 0 };
        list + u64::from(self.chunk_count).div_ceil(8)
    }
}

pub(crate) fn read_table_header(reader: &mut Reader<'_>) -> Result<TableHeader, Error> {
    let start = reader.open(format::TABL)?;
    if start.len > 1 << 17 {
        return Err(reader.malformed(
            start,
            format!("a {}-byte table header is too long", start.len),
        ));
    }
    let body = reader.rest_of_body()?;
    reader.close()?;
    let mut f = FieldReader::new(&body, start);
    let type_name = f.str("the type name")?;
    let schema = f.u64("the schema")?;
    let element_size = f.u64("the element size")?;
    let element_align = f.u64("the element alignment")?;
    let code = f.u8("the encoding")?;
    let encoding = Encoding::from_code(code)
        .ok_or_else(|| reader.malformed(start, format!("unknown encoding code {code}")))?;
    let retention = match f.u8("the retention")? {
        0 => Retention::Manual,
        1 => Retention::Traced,
        other => return Err(reader.malformed(start, format!("unknown retention code {other}"))),
    };
    let header = TableHeader {
        type_name,
        schema,
        element_size,
        element_align,
        encoding,
        retention,
        per_chunk: f.u32("the chunk capacity")?,
        chunk_count: f.u32("the chunk count")?,
        slot_count: f.u32("the slot count")?,
        live: f.u64("the live count")?,
        objects_len: f.u64("the objects length")?,
    };
    f.end()?;
    if header.slot_count == 0 || header.live > u64::from(header.slot_count) - 1 {
        return Err(reader.malformed(
            start,
            format!(
                "{} live objects in {} slots (the first is slotmap's sentinel)",
                header.live, header.slot_count
            ),
        ));
    }
    if header.encoding == Encoding::RawPod
        && header.element_size.checked_mul(header.live) != Some(header.objects_len)
    {
        return Err(reader.malformed(
            start,
            format!(
                "{} raw objects of {} bytes cannot take {} bytes",
                header.live, header.element_size, header.objects_len
            ),
        ));
    }
    Ok(header)
}

/// How a generation-form SLOT body lists the live slots away from home.
#[derive(Clone, Copy)]
enum AwayForm {
    /// `(index u32, place u32)` each (format versions 2 and 3).
    Slots,
    /// `(first index u32, first place u32, count u32)` runs ([`GenerationImage::away`]).
    Runs,
}

/// Reads the rest of a SLOT body of the generation form, checking its counts against the
/// section's length before reading what they count.
fn read_generations(
    reader: &mut Reader<'_>,
    header: &TableHeader,
    start: format::SectionStart,
    form: AwayForm,
) -> Result<SlotImage, Error> {
    let len = header.slot_count as usize;
    let words = len.div_ceil(64) as u64;
    let mut left = start.len - 1;
    // Takes `bytes` of what is left of the body, or says which part the body ends in.
    let mut take = |reader: &Reader<'_>, bytes: u64, what: &str| {
        if bytes > left {
            return Err(reader.malformed(start, format!("the slot section ends inside {what}")));
        }
        left -= bytes;
        Ok(())
    };
    take(reader, words * 8 + 4, "the liveness bitmap")?;
    let live: Vec<u64> = reader.pod_values(words)?;
    let runs = u64::from(u32::from_le(reader.pod_values::<u32>(1)?[0]));
    take(reader, runs * 8 + 4, "the generation runs")?;
    let generations: Vec<[u32; 2]> = reader.pod_values(runs)?;
    let away = u64::from(u32::from_le(reader.pod_values::<u32>(1)?[0]));
    let away_bytes = match form {
        AwayForm::Slots => 8,
        AwayForm::Runs => 12,
    };
    take(reader, away * away_bytes, "the away slots")?;
    if left != 0 {
        return Err(reader.malformed(start, format!("{left} bytes after the away slots")));
    }
    let away: Vec<[u32; 3]> = match form {
        AwayForm::Slots => reader
            .pod_values::<[u32; 2]>(away)?
            .into_iter()
            .map(|[i, p]| [u32::from_le(i), u32::from_le(p), 1])
            .collect(),
        AwayForm::Runs => reader
            .pod_values::<[u32; 3]>(away)?
            .into_iter()
            .map(|r| r.map(u32::from_le))
            .collect(),
    };
    Ok(SlotImage::Generations(GenerationImage {
        len,
        live: live.into_iter().map(u64::from_le).collect(),
        generations: generations
            .into_iter()
            .map(|r| r.map(u32::from_le))
            .collect(),
        away,
    }))
}

/// Reads a table's SLOT and FREE sections and checks them.
pub(crate) fn read_image(
    reader: &mut Reader<'_>,
    header: &TableHeader,
) -> Result<TableImage, Error> {
    let start = reader.open(format::SLOT)?;
    let mut form = [0u8; 1];
    if start.len == 0 {
        return Err(reader.malformed(start, "an empty slot section"));
    }
    reader.body(&mut form)?;
    let slots = match form[0] {
        SLOTS_AS_RECORDS => read_slot_records(reader, header, start)?,
        SLOTS_AS_RUNS => read_slot_runs(reader, header, start)?,
        SLOTS_AS_GENERATIONS => read_generations(reader, header, start, AwayForm::Slots)?,
        SLOTS_AS_GENERATION_RUNS => read_generations(reader, header, start, AwayForm::Runs)?,
        other => return Err(reader.malformed(start, format!("unknown slot encoding {other}"))),
    };
    reader.close()?;
    let (free_order, chunks_present) = read_free(reader, header)?;
    let image = TableImage {
        per_chunk: header.per_chunk,
        slots,
        free_order,
        chunks_present,
    };
    let summary = image.check(&header.type_name)?;
    if summary.live != header.live {
        return Err(SnapshotError::InconsistentSlots {
            type_name: header.type_name.clone(),
            message: format!(
                "the header counts {} live objects, the slot table {}",
                header.live, summary.live
            ),
        }
        .into());
    }
    Ok(image)
}

/// The body of a SLOT section in the records form, after its form byte.
fn read_slot_records(
    reader: &mut Reader<'_>,
    header: &TableHeader,
    start: format::SectionStart,
) -> Result<SlotImage, Error> {
    if start.len != header.slot_records_len() {
        return Err(reader.malformed(
            start,
            format!(
                "{} slots need {} bytes, not {}",
                header.slot_count,
                header.slot_records_len(),
                start.len
            ),
        ));
    }
    let raw: Vec<[u32; 2]> = reader.pod_values(u64::from(header.slot_count))?;
    Ok(SlotImage::Records(
        raw.into_iter()
            .map(|[v, p]| (u32::from_le(v), u32::from_le(p)))
            .collect(),
    ))
}

/// The body of a SLOT section in the runs form, after its form byte: runs that cover
/// the slots exactly, each within the places a table addresses.
fn read_slot_runs(
    reader: &mut Reader<'_>,
    header: &TableHeader,
    start: format::SectionStart,
) -> Result<SlotImage, Error> {
    if !(start.len - 1).is_multiple_of(12) || (start.len - 1) / 12 > u64::from(header.slot_count) {
        return Err(reader.malformed(
            start,
            format!(
                "{} bytes are not runs of the {} slots",
                start.len - 1,
                header.slot_count
            ),
        ));
    }
    let mut runs: Vec<[u32; 3]> = reader.pod_values((start.len - 1) / 12)?;
    let mut covered = 0u64;
    for run in &mut runs {
        let [version, place, count] = run.map(u32::from_le);
        let live = version % 2 == 1;
        let fits = count > 0
            && covered + u64::from(count) <= u64::from(header.slot_count)
            && (live || place == 0)
            && (!live || u64::from(place) + u64::from(count) <= 1 << 32);
        if !fits {
            return Err(reader.malformed(
                start,
                format!(
                    "the run ({version}, {place}, {count}) does not fit the {} slots",
                    header.slot_count
                ),
            ));
        }
        covered += u64::from(count);
        *run = [version, place, count];
    }
    if covered != u64::from(header.slot_count) {
        return Err(reader.malformed(
            start,
            format!(
                "the runs cover {covered} of the {} slots",
                header.slot_count
            ),
        ));
    }
    // Kept as runs: a filled, never churned table is one run, whatever its size.
    Ok(SlotImage::from_runs(runs))
}

/// A FREE section: the list of vacant slots of a file before version 3, and which
/// chunks exist.
fn read_free(
    reader: &mut Reader<'_>,
    header: &TableHeader,
) -> Result<(Option<Vec<u32>>, Vec<bool>), Error> {
    let lists_vacant = reader.version() < 3;
    let start = reader.open(format::FREE)?;
    if start.len != header.free_len(lists_vacant) {
        return Err(reader.malformed(
            start,
            format!(
                "{} vacant slots and {} chunks need {} bytes, not {}",
                header.vacant(),
                header.chunk_count,
                header.free_len(lists_vacant),
                start.len
            ),
        ));
    }
    let list: Option<Vec<u32>> = match lists_vacant {
        true => Some(reader.pod_values(header.vacant())?),
        false => None,
    };
    let present: Vec<u8> = reader.pod_values(u64::from(header.chunk_count).div_ceil(8))?;
    reader.close()?;
    Ok((
        list.map(|l| l.into_iter().map(u32::from_le).collect()),
        (0..header.chunk_count as usize)
            .map(|c| present[c / 8] >> (c % 8) & 1 == 1)
            .collect(),
    ))
}

/// Checks that the file's table fits `T` as this program compiled it.
fn check_type<T: Pooled>(header: &TableHeader, align: usize) -> Result<(), Error> {
    if header.schema != T::SCHEMA {
        return Err(Error::SchemaMismatch {
            type_name: header.type_name.clone(),
            expected: T::SCHEMA,
            found: header.schema,
        });
    }
    let size = std::mem::size_of::<T>() as u64;
    if header.element_size != size || header.element_align != align as u64 {
        return Err(SnapshotError::ElementSize {
            type_name: header.type_name.clone(),
            expected_size: size,
            expected_align: align as u64,
            found_size: header.element_size,
            found_align: header.element_align,
        }
        .into());
    }
    let ours = T::CODEC.encoding();
    if header.encoding != ours {
        return Err(SnapshotError::EncodingMismatch {
            type_name: header.type_name.clone(),
            expected: ours.to_string(),
            found: header.encoding.to_string(),
        }
        .into());
    }
    Ok(())
}

/// Reads one table, which must be of `T`: its TABL section, checks, image, objects.
fn read_named_table<T: Pooled>(
    reader: &mut Reader<'_>,
    pool: &Arc<HierarchicalPool>,
) -> Result<Table<T>, Error> {
    let header = read_table_header(reader)?;
    if header.type_name != T::TYPE_NAME {
        return Err(SnapshotError::WrongContent {
            expected: format!("a table of `{}`", T::TYPE_NAME),
            found: format!("a table of `{}`", header.type_name),
        }
        .into());
    }
    read_table::<T>(reader, &header, pool.clone())
}

/// Reads one table of `T` (after its TABL section): checks, image, objects.
fn read_table<T: Pooled>(
    reader: &mut Reader<'_>,
    header: &TableHeader,
    pool: Arc<HierarchicalPool>,
) -> Result<Table<T>, Error> {
    let empty = Table::<T>::pooled_in(pool.clone());
    check_type::<T>(header, empty.hints().align)?;
    let image = read_image(reader, header)?;
    let mut table = Table::<T>::restore(pool, empty.hints(), &image)?;
    drop(image);
    open_objects(reader, header)?;
    match codec::decoder(&T::CODEC) {
        Some(Decoder::Raw(pod)) => {
            decode_pod(pod, &mut table, &mut |buf| reader.body(buf))?;
            reader.close()?;
        }
        Some(Decoder::Bytes(form)) => {
            let body = reader.rest_of_body()?;
            reader.close()?;
            decode_serde(form, &mut table, &body, &header.type_name)?;
        }
        None => {
            return Err(SnapshotError::NotPersistable {
                type_name: header.type_name.clone(),
            }
            .into());
        }
    }
    Ok(table)
}

/// A table ready to write: its header and encoded objects.
pub(crate) trait PreparedTable {
    fn header(&self) -> &TableHeader;
    /// Bytes its four sections take.
    fn file_len(&self) -> u64;
    fn write(&self, writer: &mut Writer<'_>) -> Result<(), Error>;
}

/// SLOT body form: every slot as `(version, place)`.
const SLOTS_AS_RECORDS: u8 = 0;
/// SLOT body form: runs `(version, first place, count)` of consecutive slots with one
/// version and consecutive places (vacant slots: place 0).
const SLOTS_AS_RUNS: u8 = 1;
/// SLOT body form (format versions 2 and 3): a liveness bitmap, generation runs, and the
/// places of live slots away from home, one `(index, place)` each.
const SLOTS_AS_GENERATIONS: u8 = 2;
/// SLOT body form (from format version 4 on): as [`SLOTS_AS_GENERATIONS`], with the places
/// of live slots away from home as runs ([`GenerationImage`]).
const SLOTS_AS_GENERATION_RUNS: u8 = 3;

/// The form a table's SLOT section is written in: the shortest of the three.
enum SlotForm {
    Records,
    Runs(Vec<[u32; 3]>),
    Generations(GenerationImage),
}

struct Prepared<'a, T> {
    table: &'a Table<T>,
    header: TableHeader,
    fields: Fields,
    slots: SlotForm,
    objects: Encoded<'a>,
}

impl<'a, T: Pooled> Prepared<'a, T> {
    fn new(table: &'a Table<T>) -> Result<Self, Error> {
        let objects = codec::encode(&T::CODEC, table, T::TYPE_NAME)?;
        let header = TableHeader {
            type_name: T::TYPE_NAME.to_owned(),
            schema: T::SCHEMA,
            element_size: std::mem::size_of::<T>() as u64,
            element_align: table.hints().align as u64,
            encoding: T::CODEC.encoding(),
            retention: table.retention(),
            per_chunk: table.chunk_capacity(),
            chunk_count: u32::try_from(table.chunk_slots()).expect("chunk indices are u32"),
            slot_count: u32::try_from(table.slot_count())
                .expect("slotmap holds fewer than 2^32 slots"),
            live: table.len() as u64,
            objects_len: objects.len(),
        };
        let fields = header.fields();
        // The shortest form. The generation form's length is counted first (one pass, no
        // allocation); runs are looked for only while they stay shorter than both others
        // (a table filled in order, or compacted in order, is few runs).
        let records = header.slot_records_len() - 1;
        let generations = table.generation_image_len();
        let slots = match table.slot_runs((records.min(generations) / 12) as usize) {
            Some(runs) => SlotForm::Runs(runs),
            None if generations < records => SlotForm::Generations(table.generation_image()),
            None => SlotForm::Records,
        };
        Ok(Prepared {
            table,
            header,
            fields,
            slots,
            objects,
        })
    }
}

impl<T> Prepared<'_, T> {
    /// Bytes of the SLOT body.
    fn slot_len(&self) -> u64 {
        match &self.slots {
            SlotForm::Runs(runs) => 1 + runs.len() as u64 * 12,
            SlotForm::Generations(g) => 1 + g.encoded_len(),
            SlotForm::Records => self.header.slot_records_len(),
        }
    }
}

impl<T: Pooled> PreparedTable for Prepared<'_, T> {
    fn header(&self) -> &TableHeader {
        &self.header
    }

    fn file_len(&self) -> u64 {
        4 * SECTION_OVERHEAD
            + self.fields.0.len() as u64
            + self.slot_len()
            + self.header.free_len(false)
            + self.header.objects_len
    }

    fn write(&self, w: &mut Writer<'_>) -> Result<(), Error> {
        const BATCH: usize = 8192;
        w.section_bytes(format::TABL, &self.fields.0)?;
        w.section(format::SLOT, self.slot_len(), |b| {
            match &self.slots {
                SlotForm::Runs(runs) => {
                    b.write(&[SLOTS_AS_RUNS])?;
                    return write_u32s_le(b, runs.as_flattened());
                }
                SlotForm::Generations(g) => {
                    b.write(&[SLOTS_AS_GENERATION_RUNS])?;
                    return write_generations(b, g);
                }
                SlotForm::Records => {}
            }
            b.write(&[SLOTS_AS_RECORDS])?;
            let mut buf: Vec<u8> = Vec::with_capacity(BATCH * 8);
            for (version, place) in self.table.slot_records() {
                buf.extend_from_slice(&version.to_le_bytes());
                buf.extend_from_slice(&place.to_le_bytes());
                if buf.len() == BATCH * 8 {
                    b.write(&buf)?;
                    buf.clear();
                }
            }
            b.write(&buf)
        })?;
        w.section(format::FREE, self.header.free_len(false), |b| {
            let mut present = vec![0u8; (self.header.chunk_count as usize).div_ceil(8)];
            for (c, p) in self.table.chunks_present().enumerate() {
                present[c / 8] |= u8::from(p) << (c % 8);
            }
            b.write(&present)
        })?;
        w.section(format::OBJS, self.header.objects_len, |b| {
            // Short runs (a table that had objects removed) are gathered into one buffer,
            // so that checksum and write are called on large pieces.
            const GATHER: usize = 1 << 20;
            let mut gathered: Vec<u8> = Vec::with_capacity(GATHER + GATHER / 16);
            self.objects.for_each_piece(&mut |piece| {
                if piece.len() >= GATHER / 16 {
                    b.write(&gathered)?;
                    gathered.clear();
                    return b.write(piece);
                }
                gathered.extend_from_slice(piece);
                if gathered.len() >= GATHER {
                    b.write(&gathered)?;
                    gathered.clear();
                }
                Ok(())
            })?;
            b.write(&gathered)
        })
    }
}

/// Writes a generation image: the bitmap, then the counted generation runs and away
/// slots.
fn write_generations(b: &mut format::BodyWriter<'_, '_>, g: &GenerationImage) -> Result<(), Error> {
    if cfg!(target_endian = "little") {
        b.write(bytemuck::cast_slice(&g.live))?;
    } else {
        for block in g.live.chunks(8192) {
            let bytes: Vec<u8> = block.iter().flat_map(|v| v.to_le_bytes()).collect();
            b.write(&bytes)?;
        }
    }
    let count = |n: usize| u32::try_from(n).expect("fewer runs than slots, below 2^32");
    write_u32s_le(b, &[count(g.generations.len())])?;
    write_u32s_le(b, g.generations.as_flattened())?;
    write_u32s_le(b, &[count(g.away.len())])?;
    write_u32s_le(b, g.away.as_flattened())
}

/// Writes `values` as little-endian bytes, straight from memory where that is their form.
fn write_u32s_le(b: &mut format::BodyWriter<'_, '_>, values: &[u32]) -> Result<(), Error> {
    if cfg!(target_endian = "little") {
        return b.write(bytemuck::cast_slice(values));
    }
    for block in values.chunks(8192) {
        let bytes: Vec<u8> = block.iter().flat_map(|v| v.to_le_bytes()).collect();
        b.write(&bytes)?;
    }
    Ok(())
}

/// Prepares a store's erased table for writing.
type PrepareFn = for<'a> fn(&'a dyn ErasedTable) -> Result<Box<dyn PreparedTable + 'a>, Error>;

/// A store as read from a snapshot, in parts: the store layer puts them together.
pub(crate) struct StoreParts {
    /// The pool the tables were made in.
    pub pool: Arc<HierarchicalPool>,
    /// Every table, with what the store keeps beside it.
    pub tables: Vec<LoadedTable>,
    /// The explicit roots and their counts.
    pub roots: Vec<(AnyHandle, usize)>,
}

/// One table of a loaded store, with the per-type entry points that
/// [`Store::register`](crate::Store::register) would have kept for it.
pub(crate) struct LoadedTable {
    pub type_id: TypeId,
    pub table: Box<dyn TableInternals>,
    pub ops: TypeOps,
}

/// What a store keeps beside the table of a registered type: its tracing entry points
/// (only for a type whose objects hold handles: the collector skips the others' tables)
/// and how to save it. Made where the type is known, by registration or a load.
#[derive(Clone, Copy)]
pub(crate) struct TypeOps {
    pub gc: Option<GcOps>,
    pub persist: StoreTableOps,
}

impl TypeOps {
    pub(crate) fn of<T: Pooled + Trace + Send + Sync>() -> Self {
        TypeOps {
            gc: T::HOLDS_HANDLES.then(GcOps::of::<T>),
            persist: StoreTableOps::of::<T>(),
        }
    }
}

/// What the store keeps per registered type to save its table.
#[derive(Clone, Copy)]
pub(crate) struct StoreTableOps {
    pub type_name: &'static str,
    pub prepare: PrepareFn,
}

impl StoreTableOps {
    pub(crate) fn of<T: Pooled + Send + Sync>() -> Self {
        fn prepare<T: Pooled + Send + Sync>(
            t: &dyn ErasedTable,
        ) -> Result<Box<dyn PreparedTable + '_>, Error> {
            let table: &Table<T> = t
                .as_any()
                .downcast_ref()
                .expect("the ops of T are stored under T's TypeId");
            Ok(Box::new(Prepared::new(table)?))
        }
        StoreTableOps {
            type_name: T::TYPE_NAME,
            prepare: prepare::<T>,
        }
    }
}

/// Saves `table` alone to `path`, atomically and durably (see [`AtomicFile`]).
///
/// ```
/// use neurostore::{Neuron, neural::NeuronParams, snapshot, table::Table};
///
/// let params = NeuronParams::default();
/// let mut t: Table<Neuron> = Table::pooled();
/// let a = t.insert(Neuron::new(&params));
/// let b = t.insert(Neuron::new(&params));
/// t.remove(b);
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("neurons.nsnap");
/// snapshot::save_table(&t, &path)?;
///
/// let mut back: Table<Neuron> = snapshot::load_table(&path)?;
/// assert_eq!(back.get(a), t.get(a));
/// assert_eq!(back.get(b), None); // stale stays stale
/// assert_eq!(back.insert(Neuron::new(&params)), t.insert(Neuron::new(&params)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// [`SnapshotError::NotPersistable`] for a type without an encoding,
/// [`SnapshotError::Encode`], [`Error::Io`]; the file at `path` is then as it was.
pub fn save_table<T: Pooled>(
    table: &Table<T>,
    path: impl AsRef<Path>,
) -> Result<SnapshotReport, Error> {
    Options::new().save_table(table, path)
}

/// Writes `table` as a snapshot to `out`.
///
/// # Errors
/// As [`save_table`].
pub fn save_table_to<T: Pooled>(
    table: &Table<T>,
    out: impl Write,
) -> Result<SnapshotReport, Error> {
    Options::new().save_table_to(table, out)
}

/// Loads a table saved by [`save_table`], into the default pool.
///
/// # Errors
/// [`Error::Io`], [`Error::SchemaMismatch`], or the [`SnapshotError`] that says what is
/// wrong with the file (also [`SnapshotError::WrongContent`] for a store's file or another
/// type's table).
pub fn load_table<T: Pooled>(path: impl AsRef<Path>) -> Result<Table<T>, Error> {
    Options::new().load_table(path)
}

/// Loads a table from a stream written by [`save_table_to`].
///
/// # Errors
/// As [`load_table`].
pub fn load_table_from<T: Pooled>(input: impl Read) -> Result<Table<T>, Error> {
    Options::new().load_table_from(input)
}
