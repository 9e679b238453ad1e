package io.mqvirtio.memory;

/**
 * Translates guest-physical ranges to this process's addresses, as {@link GuestMemory#hostAddress} does, remembering
 * the region the last range was in: a burst's buffers are nearly always in the same region, so most translations are
 * two compares and an add instead of a search of the table. One per ring, owned by its worker.
 */
public final class RegionCache {
    private final GuestMemory memory;
    private long gpa;  // the remembered region: its guest-physical start,
    private long size; // its size (0: none yet; a region is never empty),
    private long host; // and where it is mapped here

    public RegionCache(GuestMemory memory) {
        this.memory = memory;
    }

    /**
     * This process's address of [addr, addr+len), which lies wholly inside one region; 0 when it does not (the same
     * ranges as {@link GuestMemory#regionOfGpa} accepts, unsigned and without overflow).
     */
    public long hostAddress(long addr, long len) {
        long off = addr - gpa;
        // An empty range goes to the table: it may sit on the edge between two regions (the table's first answers),
        // or at 0 just past a region that ends at 2^64, where the unsigned offset alone would take it.
        if (len == 0 || size == 0 || Long.compareUnsigned(off, size) > 0 || Long.compareUnsigned(len, size - off) > 0) {
            return lookup(addr, len);
        }
        return host + off;
    }

    /** The table's answer, remembering its region (kept out of {@link #hostAddress} so that stays small to inline). */
    private long lookup(long addr, long len) {
        MemoryRegion r = memory.regionOfGpa(addr, len);
        if (r == null) {
            return 0;
        }
        gpa = r.guestPhysAddr();
        size = r.size();
        host = r.segment().address();
        return host + (addr - gpa);
    }
}
