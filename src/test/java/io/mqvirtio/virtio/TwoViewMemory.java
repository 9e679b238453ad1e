package io.mqvirtio.virtio;

import io.mqvirtio.linux.MemFd;
import io.mqvirtio.linux.Mmap;
import io.mqvirtio.memory.GuestMemory;
import io.mqvirtio.memory.MemoryRegion;
import java.lang.foreign.MemorySegment;
import java.util.List;

/**
 * One memfd mapped twice, as a frontend process and a backend process would see it: the driver writes through
 * {@link #driver()}, the device reads through a {@link GuestMemory} built on the second mapping. The guest-physical
 * base is deliberately unlike either mapping's address, so confusing the address kinds fails a test.
 */
final class TwoViewMemory implements AutoCloseable {
    static final long GPA_BASE = 0x4000_0000L;

    final MemFd memfd;
    final Mmap driverMap;
    final Mmap deviceMap;
    final GuestMemory guest;
    private long next;

    TwoViewMemory(long size) {
        memfd = MemFd.create("mqvirtio-test", size);
        driverMap = Mmap.shared(memfd, 0, size);
        deviceMap = Mmap.shared(memfd, 0, size);
        // The frontend's "virtual address" of the region is its own mapping's address (as with vhost-user).
        guest = GuestMemory.of(List.of(new MemoryRegion(GPA_BASE, size, driverMap.segment().address(), 0,
                deviceMap.segment())));
    }

    MemorySegment driver() {
        return driverMap.segment();
    }

    /** Bump allocation in the driver's view; returns the offset. */
    long alloc(long bytes, long align) {
        long off = (next + align - 1) & -align;
        if (off + bytes > driverMap.size()) {
            throw new IllegalStateException("test memory exhausted");
        }
        next = off + bytes;
        return off;
    }

    long gpa(long offset) {
        return GPA_BASE + offset;
    }

    long uva(long offset) {
        return driverMap.segment().address() + offset;
    }

    /** A ring laid out in the shared memory, seen from both sides (the layout the features choose). */
    record Ring(DriverRing driver, DeviceRing device, long descOff, long availOff, long usedOff) {}

    Ring ring(int size, long features, int indirectMax) {
        Rings.Layout l = Rings.layout(size, features);
        long base = alloc(l.totalBytes(), 4096);
        MemorySegment d = driver();
        MemorySegment ind = null;
        long indGpa = 0;
        if (indirectMax > 0) {
            long off = alloc((long) size * indirectMax * 16, 16);
            ind = d.asSlice(off, (long) size * indirectMax * 16);
            indGpa = gpa(off);
        }
        DriverRing dq = Rings.driver(size, features, d.asSlice(base, l.totalBytes()), ind, indGpa, indirectMax);
        DeviceRing vq = Rings.device(guest, size, uva(base + l.descOffset()), uva(base + l.availOffset()),
                uva(base + l.usedOffset()), features, Rings.packed(features) ? RingBase.PACKED_START : RingBase.split(0, 0));
        return new Ring(dq, vq, base + l.descOffset(), base + l.availOffset(), base + l.usedOffset());
    }

    @Override
    public void close() {
        deviceMap.close();
        driverMap.close();
        memfd.close();
    }
}
