//! Unlinking a node from an intrusive doubly linked list, shared by every list of pool
//! metadata (chunks, medium regions, large arenas and mappings, thread counters).

/// Unlinks `$node` (a raw pointer to a struct with raw `next` and `prev` fields) from
/// the list whose head is the place `$head`. Must be used inside an `unsafe` block whose
/// SAFETY comment guarantees that the node and its neighbours are live members of that
/// list and that no one else touches the list meanwhile. The node's own links are left
/// as they were.
macro_rules! unlink_node {
    ($head:expr, $node:expr) => {{
        let node = $node;
        let (n, p) = ((*node).next, (*node).prev);
        match p.as_mut() {
            Some(p) => p.next = n,
            None => $head = n,
        }
        if let Some(n) = n.as_mut() {
            n.prev = p;
        }
    }};
}

pub(crate) use unlink_node;
