/// Stores `value` only if `target` holds something else. Resets sweep whole tables of the
/// mapped file at every lone attach; a store of an unchanged value still makes the kernel
/// fault the page writable and write it back (on a disk file, `page_mkwrite` plus writeback
/// of every page of the table), which dominated a short-lived process's open.
@inline(__always)
package func storeIfChanged<T: Equatable>(_ target: inout T, _ value: T) {
    if target != value { target = value }
}
