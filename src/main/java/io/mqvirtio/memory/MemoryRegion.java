package io.mqvirtio.memory;

import java.lang.foreign.MemorySegment;

/**
 * One region of memory a frontend shared (a row of vhost-user's SET_MEM_TABLE / ADD_MEM_REG), already mapped here.
 *
 * @param guestPhysAddr where the region starts in guest-physical address space (what descriptors hold)
 * @param size          its length in bytes
 * @param userAddr      where the region starts in the frontend's virtual address space (what ring addresses hold)
 * @param mmapOffset    the offset into the shared fd at which the region starts
 * @param segment       this process's mapping of exactly the region ({@code size} bytes)
 */
public record MemoryRegion(long guestPhysAddr, long size, long userAddr, long mmapOffset, MemorySegment segment) {
    public MemoryRegion {
        if (size <= 0) {
            throw new GuestMemoryException("memory region of size " + Long.toUnsignedString(size));
        }
        if (Long.compareUnsigned(guestPhysAddr, -size) > 0) {
            throw new GuestMemoryException("memory region wraps the guest-physical address space: gpa=0x"
                    + Long.toHexString(guestPhysAddr) + " size=0x" + Long.toHexString(size));
        }
        if (Long.compareUnsigned(userAddr, -size) > 0) {
            throw new GuestMemoryException("memory region wraps the frontend address space: uva=0x"
                    + Long.toHexString(userAddr) + " size=0x" + Long.toHexString(size));
        }
        if (segment.byteSize() != size) {
            throw new IllegalArgumentException("mapping is " + segment.byteSize() + " bytes, region " + size);
        }
    }

    /** The last guest-physical address inside the region (inclusive, so a region may end at 2^64). */
    public long lastGuestPhysAddr() {
        return guestPhysAddr + size - 1;
    }

    boolean containsGpa(long gpa, long len) {
        return within(gpa, len, guestPhysAddr);
    }

    boolean containsUva(long uva, long len) {
        return within(uva, len, userAddr);
    }

    /** [addr, addr+len) lies in [start, start+size), all unsigned, without overflow. */
    private boolean within(long addr, long len, long start) {
        long off = addr - start;
        return Long.compareUnsigned(addr, start) >= 0
                && Long.compareUnsigned(off, size) <= 0
                && Long.compareUnsigned(len, size - off) <= 0;
    }

    boolean overlapsGpa(MemoryRegion o) {
        return Long.compareUnsigned(guestPhysAddr, o.lastGuestPhysAddr()) <= 0
                && Long.compareUnsigned(o.guestPhysAddr, lastGuestPhysAddr()) <= 0;
    }
}
