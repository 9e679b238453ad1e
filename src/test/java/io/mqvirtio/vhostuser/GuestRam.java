package io.mqvirtio.vhostuser;

import io.mqvirtio.linux.MemFd;
import io.mqvirtio.linux.Mmap;
import io.mqvirtio.virtio.SplitDriverRing;
import io.mqvirtio.virtio.SplitRing;
import java.lang.foreign.MemorySegment;

/**
 * A frontend's memory for tests: one memfd, mapped here as the frontend sees it. The region's frontend-virtual
 * address is this mapping's address (as with QEMU); its guest-physical base is deliberately different. Ring
 * {@code i} lives at a fixed slot; buffers are bump-allocated after the rings.
 */
final class GuestRam implements AutoCloseable {
    static final String NAME = "mqv-guest";
    static final long GPA_BASE = 0x4000_0000L;
    static final long SIZE = 4L << 20;
    static final int RING_SLOTS = 8;
    static final long RING_SPAN = 64 << 10; // holds a 1024-entry split ring

    final MemFd memfd;
    final Mmap map;
    private long next = RING_SLOTS * RING_SPAN;

    GuestRam() {
        this(SIZE);
    }

    GuestRam(long size) {
        this(NAME, size);
    }

    GuestRam(String name, long size) {
        memfd = MemFd.create(name, size);
        Mmap m;
        try {
            m = Mmap.shared(memfd, 0, size);
        } catch (RuntimeException e) {
            memfd.close();
            throw e;
        }
        map = m;
    }

    MemorySegment seg() {
        return map.segment();
    }

    long uva(long off) {
        return map.segment().address() + off;
    }

    long gpa(long off) {
        return GPA_BASE + off;
    }

    int fd() {
        return memfd.fd();
    }

    /** The one region covering the whole memfd. */
    RawPeer.Region region() {
        return new RawPeer.Region(GPA_BASE, map.size(), uva(0), 0);
    }

    byte[] memTable() {
        return RawPeer.memTable(region());
    }

    /** Ring {@code i}'s parts, laid out contiguously at its slot (desc, avail, used). */
    record RingAt(int index, int size, long descOff, long availOff, long usedOff) {}

    RingAt ring(int index, int size) {
        SplitRing.Layout l = SplitRing.Layout.contiguous(size);
        long base = index * RING_SPAN;
        if (l.totalBytes() > RING_SPAN) {
            throw new IllegalArgumentException("ring of " + size + " does not fit its slot");
        }
        return new RingAt(index, size, base + l.descOffset(), base + l.availOffset(), base + l.usedOffset());
    }

    byte[] vringAddr(RingAt r) {
        return RawPeer.vringAddr(r.index(), 0, uva(r.descOff()), uva(r.usedOff()), uva(r.availOff()), 0);
    }

    SplitDriverRing driver(RingAt r, long features) {
        return new SplitDriverRing(r.size(), seg().asSlice(r.descOff(), SplitRing.descTableBytes(r.size())),
                seg().asSlice(r.availOff(), SplitRing.availBytes(r.size())),
                seg().asSlice(r.usedOff(), SplitRing.usedBytes(r.size())), features);
    }

    int usedIdx(RingAt r) {
        return Short.toUnsignedInt(seg().get(java.lang.foreign.ValueLayout.JAVA_SHORT, r.usedOff() + SplitRing.USED_IDX));
    }

    /** Bump allocation of buffer space; returns the offset. */
    long alloc(long bytes) {
        long off = (next + 63) & -64L;
        if (off + bytes > map.size()) {
            throw new IllegalStateException("guest memory exhausted");
        }
        next = off + bytes;
        return off;
    }

    @Override
    public void close() {
        try {
            map.close();
        } finally {
            memfd.close();
        }
    }
}
