// neurostore.cuh: resolve neurostore handles inside CUDA kernels.
//
// A DeviceMirror keeps a device copy of a table: its objects (chunk i at byte
// i * places_per_chunk * elem_size, so place p is at p * elem_size) and its slot table (one
// ns_slot per slot index). Pass the mirror's view (DeviceMirror::view on the host) to a
// kernel as an ns_table, and resolve handles with ns_resolve, as the host's Table::get
// does: a null, zero, stale or out-of-range handle resolves to null.
//
// The host gets this text from neurostore::cuda::HEADER, to prepend to kernels compiled
// at run time with NVRTC. Only standard C++ is used, so it needs no include path.
#pragma once

typedef unsigned int ns_u32;
typedef unsigned long long ns_u64;

// One slot as the mirror uploads it: the slot's version (odd while it names an object)
// and the object's place (meaningful only while the slot is live).
struct ns_slot {
    ns_u32 version;
    ns_u32 place;
};

// A mirrored table as kernels see it; the same layout as neurostore::cuda::MirrorView.
struct ns_table {
    const ns_slot* slots;
    ns_u32 slot_count;
    char* storage;
    ns_u32 elem_size;
};

// A handle's 64-bit form: the slot index in the low 32 bits, the generation in the high 32.
__device__ __forceinline__ ns_u32 ns_handle_index(ns_u64 handle) { return (ns_u32)handle; }
__device__ __forceinline__ ns_u32 ns_handle_generation(ns_u64 handle) {
    return (ns_u32)(handle >> 32);
}

// True when `handle` names a live object; its place is then written to `*place`.
__device__ __forceinline__ bool ns_resolve_place(ns_table table, ns_u64 handle, ns_u32* place) {
    ns_u32 index = ns_handle_index(handle);
    ns_u32 generation = ns_handle_generation(handle);
    // Slot 0 is the slot table's sentinel; live versions are odd.
    if (index == 0u || index >= table.slot_count || (generation & 1u) == 0u) {
        return false;
    }
    ns_slot slot = table.slots[index];
    if (slot.version != generation) {
        return false;
    }
    *place = slot.place;
    return true;
}

// The object `handle` names, or null when it names none.
__device__ __forceinline__ void* ns_resolve(ns_table table, ns_u64 handle) {
    ns_u32 place;
    if (!ns_resolve_place(table, handle, &place)) {
        return 0;
    }
    return table.storage + (ns_u64)place * table.elem_size;
}

// Typed form: NS_RESOLVE(Neuron, neurons, h) is a Neuron* or null.
#define NS_RESOLVE(T, table, handle) ((T*)ns_resolve((table), (handle)))
