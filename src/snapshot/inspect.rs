//! Reading a snapshot without its Rust types: what `neurostore inspect` and
//! `neurostore verify` print. Every section is read and checksummed, every table's slot
//! table checked; objects are only checksummed (and, when raw, their length checked),
//! since decoding them needs the types.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use super::format::{Reader, tag_text};
use super::input::Stream;
use super::{
    Content, Encoding, GraphState, RingImage, open_objects, read_head, read_image, read_roots,
    read_table_header,
};
use crate::error::Error;
use crate::pooled::Retention;

/// One section of a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SectionInfo {
    /// The section's tag (`HEAD`, `TABL`, `SLOT`, `FREE`, `OBJS`, `ROOT`, `GRPH`, `RING`,
    /// `DONE`).
    pub tag: String,
    /// Where the section starts.
    pub offset: u64,
    /// Bytes of its body.
    pub len: u64,
    /// Its CRC-32, as stored and verified.
    pub crc: u32,
}

/// One table of a file.
#[derive(Clone, Debug, PartialEq)]
pub struct TableInfo {
    /// [`Pooled::TYPE_NAME`](crate::Pooled::TYPE_NAME) of its type.
    pub type_name: String,
    /// The schema fingerprint it was written with.
    pub schema: u64,
    /// Bytes per object in memory.
    pub element_size: u64,
    /// Alignment of objects in the table's chunks.
    pub element_align: u64,
    /// How its objects are encoded.
    pub encoding: Encoding,
    /// Whether the garbage collector frees its objects.
    pub retention: Retention,
    /// Places per chunk.
    pub chunk_capacity: u32,
    /// Chunks held.
    pub chunks: u64,
    /// Live objects.
    pub live: u64,
    /// Vacant slots (handles that stay stale).
    pub vacant: u64,
    /// Free places below the highest occupied place.
    pub holes: u64,
    /// `holes / (live + holes)`.
    pub fragmentation: f64,
    /// Bytes of encoded objects.
    pub object_bytes: u64,
}

/// The simulation state of a graph checkpoint, beside its tables.
#[derive(Clone, Debug, PartialEq)]
pub struct GraphInfo {
    /// Steps simulated when it was saved.
    pub step: u64,
    /// Model time simulated (ms).
    pub time_ms: f64,
    /// The step length of the last step (ms), if the graph had stepped.
    pub resolution: Option<f64>,
    /// Neurons that fired in the last step.
    pub last_spikes: u64,
    /// Steps the ring of input in flight spans.
    pub ring_steps: u32,
    /// Input in flight: (neuron, step) entries of the ring that hold input.
    pub pending_inputs: u64,
    /// The last step ahead that has input pending, counted from the saved step (0 when
    /// nothing is in flight).
    pub pending_span: u32,
}

impl GraphInfo {
    fn new(state: &GraphState, ring: &RingImage<Vec<f32>>) -> Self {
        let columns = ring.block_columns as usize;
        let mut pending_inputs = 0u64;
        let mut pending_span = 0;
        for k in 0..ring.slots {
            let row = (state.step.wrapping_add(u64::from(k)) % u64::from(ring.slots)) as usize;
            let range = row * columns..(row + 1) * columns;
            let here = ring
                .blocks
                .iter()
                .map(|[ex, inh]| {
                    let pending =
                        |a: &[f32]| a[range.clone()].iter().filter(|&&x| x != 0.0).count();
                    (pending(ex) + pending(inh)) as u64
                })
                .sum::<u64>();
            if here > 0 {
                pending_inputs += here;
                pending_span = k;
            }
        }
        GraphInfo {
            step: state.step,
            time_ms: state.time_ms,
            resolution: state.resolution,
            last_spikes: state.spikes.len() as u64,
            ring_steps: ring.slots,
            pending_inputs,
            pending_span,
        }
    }
}

/// What a snapshot file holds, from [`inspect`].
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotInfo {
    /// The format version.
    pub format_version: u32,
    /// The neurostore version that wrote it.
    pub crate_version: String,
    /// A store or a single table.
    pub content: Content,
    /// Bytes of the file.
    pub bytes: u64,
    /// Its tables, in file order.
    pub tables: Vec<TableInfo>,
    /// GC roots saved with a store (distinct handles).
    pub roots: u64,
    /// The simulation state of a graph checkpoint.
    pub graph: Option<GraphInfo>,
    /// Every section, in file order.
    pub sections: Vec<SectionInfo>,
}

/// Reads a whole snapshot and checks everything that can be checked without the Rust
/// types: structure, checksums, slot tables, raw object lengths.
///
/// ```
/// use neurostore::{Neuron, Store, neural::NeuronParams, snapshot};
///
/// let mut store = Store::new();
/// store.register::<Neuron>()?;
/// store.insert(Neuron::new(&NeuronParams::default()));
/// let mut file = Vec::new();
/// store.save_to(&mut file)?;
/// let info = snapshot::inspect(&file[..])?;
/// assert_eq!(info.tables[0].type_name, "Neuron");
/// assert_eq!(info.tables[0].live, 1);
/// assert_eq!(info.bytes, file.len() as u64);
/// # Ok::<(), neurostore::Error>(())
/// ```
///
/// # Errors
/// The [`SnapshotError`](crate::SnapshotError) that says what is wrong, or [`Error::Io`].
pub fn inspect(input: impl Read) -> Result<SnapshotInfo, Error> {
    let mut input = Stream(input);
    let mut reader = Reader::new(&mut input, None);
    let mut sections = Vec::new();
    let head = read_head(&mut reader)?;
    let mut tables = Vec::new();
    for _ in 0..head.tables {
        let header = read_table_header(&mut reader)?;
        let image = read_image(&mut reader, &header)?;
        let summary = image.check(&header.type_name)?;
        drop(image);
        open_objects(&mut reader, &header)?;
        reader.skip_body()?;
        reader.close()?;
        tables.push(TableInfo {
            type_name: header.type_name.clone(),
            schema: header.schema,
            element_size: header.element_size,
            element_align: header.element_align,
            encoding: header.encoding,
            retention: header.retention,
            chunk_capacity: header.per_chunk,
            chunks: summary.chunks,
            live: summary.live,
            vacant: summary.vacant,
            holes: summary.holes,
            fragmentation: summary.fragmentation(),
            object_bytes: header.objects_len,
        });
    }
    let (mut roots, mut graph) = (0, None);
    match head.content {
        Content::Store => roots = read_roots(&mut reader)?.1.len() as u64,
        Content::Table => {}
        Content::Graph => {
            let state = GraphState::read(&mut reader)?;
            let ring = RingImage::read(&mut reader)?;
            graph = Some(GraphInfo::new(&state, &ring));
        }
    }
    let bytes = super::finish(&mut reader, &head)?;
    sections.extend(reader.take_sections());
    Ok(SnapshotInfo {
        format_version: head.format_version,
        crate_version: head.crate_version,
        content: head.content,
        bytes,
        tables,
        roots,
        graph,
        sections: sections
            .into_iter()
            .map(|(tag, offset, len, crc)| SectionInfo {
                tag: tag_text(tag),
                offset,
                len,
                crc,
            })
            .collect(),
    })
}

/// [`inspect`] of the file at `path`.
///
/// # Errors
/// As [`inspect`].
pub fn inspect_file(path: impl AsRef<Path>) -> Result<SnapshotInfo, Error> {
    inspect(BufReader::with_capacity(1 << 20, File::open(path)?))
}
