//! The two sections a graph checkpoint adds after its tables (content code `2`,
//! `docs/FORMAT.md`): `GRPH`, the simulation state of a neural graph that lives outside
//! its neuron and synapse tables, and `RING`, the synaptic input in flight. This module
//! knows their layout only; what the fields mean to a running network, and the checks
//! that a loaded graph is consistent, belong to the neural layer
//! (`neural/checkpoint.rs`).

use super::format::{self, FieldReader, Fields, Reader, Writer};
use crate::error::Error;

/// The fields of a GRPH section.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct GraphState {
    /// Neuron columns the graph keeps (one past the highest slot index it tracks).
    pub columns: u64,
    /// Steps simulated.
    pub step: u64,
    /// Model time simulated (ms).
    pub time_ms: f64,
    /// The step length of the last step (ms), if any.
    pub resolution: Option<f64>,
    /// The longest delay of any synapse (ms), or an upper bound of it.
    pub max_delay_ms: f32,
    /// Whether `max_delay_ms` must be recomputed before it is used.
    pub max_delay_stale: bool,
    /// The fragmentation threshold of the graph's own compaction, if on.
    pub defrag_threshold: Option<f64>,
    /// Synapses removed since the synapse table's holes were last looked at.
    pub removed_since_check: u64,
    /// The storage place at or above which new synapses go.
    pub runs_end: u64,
    /// The neurons that fired in the last step (handle bits), in order.
    pub spikes: Vec<u64>,
}

/// Bytes of a GRPH body before its spikes.
const GRAPH_FIXED_LEN: u64 = 8 * 3 + 9 + 4 + 1 + 9 + 8 * 2 + 4;

fn optional_f64(fields: &mut Fields, value: Option<f64>) {
    fields.u8(u8::from(value.is_some()));
    fields.u64(value.map_or(0, f64::to_bits));
}

fn read_optional_f64(f: &mut FieldReader<'_>, what: &str) -> Result<Option<f64>, Error> {
    let present = f.u8(what)?;
    let bits = f.u64(what)?;
    match present {
        0 if bits == 0 => Ok(None),
        1 => Ok(Some(f64::from_bits(bits))),
        _ => Err(f.error(format!(
            "{what}: presence byte {present} with value bits {bits:#x}"
        ))),
    }
}

impl GraphState {
    /// The GRPH body.
    fn encode(&self) -> Vec<u8> {
        let mut f = Fields::default();
        f.u64(self.columns)
            .u64(self.step)
            .u64(self.time_ms.to_bits());
        optional_f64(&mut f, self.resolution);
        f.u32(self.max_delay_ms.to_bits())
            .u8(u8::from(self.max_delay_stale));
        optional_f64(&mut f, self.defrag_threshold);
        f.u64(self.removed_since_check).u64(self.runs_end);
        f.u32(u32::try_from(self.spikes.len()).expect("fewer spikes than slot indices"));
        for &s in &self.spikes {
            f.u64(s);
        }
        debug_assert_eq!(f.0.len() as u64, self.encoded_len());
        f.0
    }

    fn encoded_len(&self) -> u64 {
        GRAPH_FIXED_LEN + 8 * self.spikes.len() as u64
    }

    /// Reads a GRPH section (the reader is after the last table).
    pub(crate) fn read(reader: &mut Reader<'_>) -> Result<Self, Error> {
        let start = reader.open(format::GRPH)?;
        let body = reader.rest_of_body()?;
        reader.close()?;
        let mut f = FieldReader::new(&body, start);
        let columns = f.u64("the neuron columns")?;
        let step = f.u64("the step")?;
        let time_ms = f64::from_bits(f.u64("the model time")?);
        let resolution = read_optional_f64(&mut f, "the resolution")?;
        let max_delay_ms = f32::from_bits(f.u32("the longest delay")?);
        let max_delay_stale = match f.u8("the longest delay's staleness")? {
            0 => false,
            1 => true,
            other => return Err(f.error(format!("staleness byte {other} is neither 0 nor 1"))),
        };
        let defrag_threshold = read_optional_f64(&mut f, "the compaction threshold")?;
        let removed_since_check = f.u64("the removals since the last check")?;
        let runs_end = f.u64("the end of the synapse runs")?;
        let count = f.u32("the spike count")?;
        let mut spikes = Vec::new();
        for _ in 0..count {
            spikes.push(f.u64("a spike")?);
        }
        f.end()?;
        Ok(GraphState {
            columns,
            step,
            time_ms,
            resolution,
            max_delay_ms,
            max_delay_stale,
            defrag_threshold,
            removed_since_check,
            runs_end,
            spikes,
        })
    }
}

/// A RING section: the input in flight, as a dense ring buffer of future steps. Each block of
/// `block_columns` neuron columns is two arrays (excitatory, inhibitory) of
/// `slots × block_columns` values, slot-major.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct RingImage<A> {
    /// Steps the ring spans (0: not shaped yet).
    pub slots: u32,
    /// Neuron columns per block.
    pub block_columns: u32,
    /// Each block's excitatory and inhibitory input.
    pub blocks: Vec<[A; 2]>,
}

impl<A: AsRef<[f32]>> RingImage<A> {
    /// Values per array.
    fn array_len(slots: u32, block_columns: u32) -> u64 {
        u64::from(slots) * u64::from(block_columns)
    }

    fn encoded_len(&self) -> u64 {
        12 + self.blocks.len() as u64 * 2 * 4 * Self::array_len(self.slots, self.block_columns)
    }
}

impl RingImage<Vec<f32>> {
    /// The same image, borrowed.
    pub(crate) fn borrowed(&self) -> RingImage<&[f32]> {
        RingImage {
            slots: self.slots,
            block_columns: self.block_columns,
            blocks: self.blocks.iter().map(|[e, i]| [&e[..], &i[..]]).collect(),
        }
    }

    /// Reads a RING section, growing its arrays only as bytes arrive (a corrupt shape
    /// cannot make it allocate more than the file holds).
    pub(crate) fn read(reader: &mut Reader<'_>) -> Result<Self, Error> {
        let start = reader.open(format::RING)?;
        let mut head = [0u8; 12];
        reader.body(&mut head)?;
        let word = |k: usize| u32::from_le_bytes(head[4 * k..4 * k + 4].try_into().expect("4"));
        let (slots, block_columns, count) = (word(0), word(1), word(2));
        let per_array = Self::array_len(slots, block_columns);
        let expected = u64::from(count)
            .checked_mul(2 * 4 * per_array)
            .and_then(|n| n.checked_add(12));
        // Empty blocks take no bytes, so their number is not bounded by the body's.
        if per_array == 0 && count != 0 {
            return Err(reader.malformed(
                start,
                format!("{count} blocks of {slots} slots × {block_columns} columns hold nothing"),
            ));
        }
        if expected != Some(start.len) {
            return Err(reader.malformed(
                start,
                format!(
                    "{count} blocks of {slots} slots × {block_columns} columns do not fill \
                     a {}-byte body",
                    start.len
                ),
            ));
        }
        let mut blocks = Vec::new();
        for _ in 0..count {
            let ex = reader.pod_values::<f32>(per_array)?;
            let inh = reader.pod_values::<f32>(per_array)?;
            blocks.push([ex, inh]);
        }
        reader.close()?;
        Ok(RingImage {
            slots,
            block_columns,
            blocks,
        })
    }
}

/// The sections of a graph checkpoint that follow its tables.
pub(crate) struct GraphSections<'a> {
    pub state: &'a GraphState,
    pub ring: &'a RingImage<&'a [f32]>,
}

impl GraphSections<'_> {
    /// Bytes the two sections take in the file.
    pub(crate) fn file_len(&self) -> u64 {
        2 * format::SECTION_OVERHEAD + self.state.encoded_len() + self.ring.encoded_len()
    }

    pub(crate) fn write(&self, writer: &mut Writer<'_>) -> Result<(), Error> {
        writer.section_bytes(format::GRPH, &self.state.encode())?;
        let ring = self.ring;
        writer.section(format::RING, ring.encoded_len(), |w| {
            let mut head = Fields::default();
            head.u32(ring.slots)
                .u32(ring.block_columns)
                .u32(u32::try_from(ring.blocks.len()).expect("fewer blocks than columns"));
            w.write(&head.0)?;
            for arrays in &ring.blocks {
                for values in arrays {
                    w.write(bytemuck::cast_slice(values))?;
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::input::Stream;

    fn state() -> GraphState {
        GraphState {
            columns: 7,
            step: 12,
            time_ms: 1.2000000000000002,
            resolution: Some(0.1),
            max_delay_ms: 1.5,
            max_delay_stale: true,
            defrag_threshold: None,
            removed_since_check: 3,
            runs_end: 40,
            spikes: vec![1 | 1 << 32, 5 | 3 << 32],
        }
    }

    fn write_both(state: &GraphState, ring: &RingImage<&[f32]>) -> Vec<u8> {
        let sections = GraphSections { state, ring };
        let mut out = Vec::new();
        let mut writer = Writer::new(&mut out, sections.file_len(), None);
        sections.write(&mut writer).unwrap();
        assert_eq!(out.len() as u64, sections.file_len());
        out
    }

    #[test]
    fn both_sections_read_back_what_was_written() {
        let ex: Vec<f32> = (0..6).map(|k| k as f32).collect();
        let inh: Vec<f32> = (0..6).map(|k| -(k as f32)).collect();
        let ring = RingImage {
            slots: 3,
            block_columns: 2,
            blocks: vec![[&ex[..], &inh[..]]],
        };
        let bytes = write_both(&state(), &ring);
        let mut input = Stream(&bytes[..]);
        let mut reader = Reader::new(&mut input, None);
        assert_eq!(GraphState::read(&mut reader).unwrap(), state());
        let back = RingImage::read(&mut reader).unwrap();
        assert_eq!((back.slots, back.block_columns), (3, 2));
        assert_eq!(back.blocks, vec![[ex.clone(), inh.clone()]]);
    }

    #[test]
    fn empty_blocks_are_malformed() {
        let ring = RingImage {
            slots: 0,
            block_columns: 1024,
            blocks: vec![[&[][..], &[][..]]; 3],
        };
        let bytes = write_both(&state(), &ring);
        let mut input = Stream(&bytes[..]);
        let mut reader = Reader::new(&mut input, None);
        GraphState::read(&mut reader).unwrap();
        let err = RingImage::read(&mut reader).unwrap_err().to_string();
        assert!(
            err.contains("3 blocks of 0 slots × 1024 columns hold nothing"),
            "{err}"
        );
    }

    #[test]
    fn a_ring_whose_shape_does_not_fill_its_body_is_malformed() {
        let values = [0.0f32; 4];
        let ring = RingImage {
            slots: 2,
            block_columns: 2,
            blocks: vec![[&values[..], &values[..]]],
        };
        let mut bytes = write_both(&state(), &ring);
        // The RING body starts after GRPH; make its slot count claim 3 slots.
        let ring_body = format::SECTION_OVERHEAD as usize + state().encoded_len() as usize + 12;
        bytes[ring_body] = 3;
        let mut input = Stream(&bytes[..]);
        let mut reader = Reader::new(&mut input, None);
        GraphState::read(&mut reader).unwrap();
        let err = RingImage::read(&mut reader).unwrap_err().to_string();
        assert!(err.contains("do not fill"), "{err}");
    }
}
