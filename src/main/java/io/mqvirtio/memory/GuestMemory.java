package io.mqvirtio.memory;

import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Comparator;
import java.util.List;

/**
 * The memory a frontend shared with us: an immutable table of {@link MemoryRegion}s. Every address the peer
 * hands us (a descriptor's guest-physical address, a ring's frontend-virtual address) is translated here into a
 * bounds-checked slice of our mapping; a range that is not wholly inside one region is a
 * {@link GuestMemoryException}, never an access.
 *
 * <p>A changed table is a new {@code GuestMemory}; users swap the reference (DESIGN.md: "a new table replaces the
 * old one whole"). Ranges that straddle two regions are refused even if the regions are adjacent: QEMU never
 * produces such buffers for net, and allowing them would force every consumer to handle split segments.
 */
public final class GuestMemory {
    public static final GuestMemory EMPTY = new GuestMemory(new MemoryRegion[0]);

    private final MemoryRegion[] regions; // sorted by guest-physical address, non-overlapping

    private GuestMemory(MemoryRegion[] regions) {
        this.regions = regions;
    }

    /** Builds a table; regions whose guest-physical ranges overlap are refused. */
    public static GuestMemory of(List<MemoryRegion> list) {
        MemoryRegion[] r = list.toArray(new MemoryRegion[0]);
        Arrays.sort(r, Comparator.comparing(MemoryRegion::guestPhysAddr, Long::compareUnsigned));
        for (int i = 1; i < r.length; i++) {
            if (r[i - 1].overlapsGpa(r[i])) {
                throw new GuestMemoryException("memory regions overlap: gpa 0x" + Long.toHexString(r[i - 1].guestPhysAddr())
                        + "+0x" + Long.toHexString(r[i - 1].size()) + " and 0x" + Long.toHexString(r[i].guestPhysAddr()));
            }
        }
        return new GuestMemory(r);
    }

    /** This table plus one region (vhost-user ADD_MEM_REG). */
    public GuestMemory with(MemoryRegion region) {
        List<MemoryRegion> l = new ArrayList<>(List.of(regions));
        l.add(region);
        return of(l);
    }

    /** This table without the region that starts at {@code gpa} with {@code size} (REM_MEM_REG); null if none. */
    public MemoryRegion find(long gpa, long size) {
        for (MemoryRegion r : regions) {
            if (r.guestPhysAddr() == gpa && r.size() == size) {
                return r;
            }
        }
        return null;
    }

    public GuestMemory without(MemoryRegion region) {
        List<MemoryRegion> l = new ArrayList<>(List.of(regions));
        l.remove(region);
        return of(l);
    }

    public List<MemoryRegion> regions() {
        return List.of(regions);
    }

    public int regionCount() {
        return regions.length;
    }

    /** The region holding all of [gpa, gpa+len), or null. */
    public MemoryRegion regionOfGpa(long gpa, long len) {
        for (MemoryRegion r : regions) {
            if (r.containsGpa(gpa, len)) {
                return r;
            }
        }
        return null;
    }

    /** A slice of guest memory for [gpa, gpa+len); throws if the range is not inside one region. */
    public MemorySegment gpa(long gpa, long len) {
        MemoryRegion r = regionOfGpa(gpa, len);
        if (r == null) {
            throw outside("guest-physical", gpa, len);
        }
        return r.segment().asSlice(gpa - r.guestPhysAddr(), len);
    }

    /**
     * This process's address of [gpa, gpa+len), for system calls (readv/writev) that take raw pointers; the range is
     * checked exactly as by {@link #gpa}. Returns 0 when it lies outside (callers treat it as an error).
     */
    public long hostAddress(long gpa, long len) {
        MemoryRegion r = regionOfGpa(gpa, len);
        return r == null ? 0 : r.segment().address() + (gpa - r.guestPhysAddr());
    }

    /** A slice for [uva, uva+len) given in the frontend's virtual addresses (vring addresses). */
    public MemorySegment uva(long uva, long len) {
        for (MemoryRegion r : regions) {
            if (r.containsUva(uva, len)) {
                return r.segment().asSlice(uva - r.userAddr(), len);
            }
        }
        throw outside("frontend-virtual", uva, len);
    }

    /** The guest-physical address of a frontend-virtual one (for logging / rings given by uva). */
    public long uvaToGpa(long uva) {
        for (MemoryRegion r : regions) {
            if (r.containsUva(uva, 1)) {
                return r.guestPhysAddr() + (uva - r.userAddr());
            }
        }
        throw outside("frontend-virtual", uva, 1);
    }

    private GuestMemoryException outside(String kind, long addr, long len) {
        return new GuestMemoryException(kind + " range 0x" + Long.toHexString(addr) + "+0x" + Long.toHexString(len)
                + " is not inside the shared memory (" + regions.length + " region" + (regions.length == 1 ? "" : "s") + ")");
    }

    @Override
    public String toString() {
        StringBuilder b = new StringBuilder("GuestMemory[");
        for (MemoryRegion r : regions) {
            b.append(String.format(" gpa=0x%x size=0x%x uva=0x%x off=0x%x", r.guestPhysAddr(), r.size(), r.userAddr(),
                    r.mmapOffset()));
        }
        return b.append(" ]").toString();
    }
}
