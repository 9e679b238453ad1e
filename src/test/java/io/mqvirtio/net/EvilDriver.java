package io.mqvirtio.net;

import static io.mqvirtio.virtio.SplitRing.*;

import io.mqvirtio.linux.EventFd;
import io.mqvirtio.linux.MemFd;
import io.mqvirtio.linux.Mmap;
import io.mqvirtio.vhostuser.Frontend;
import io.mqvirtio.vhostuser.Protocol;
import io.mqvirtio.virtio.SplitRing;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;

/**
 * A test tool built from the driver's parts (the vhost-user {@link Frontend}, a memfd shared with the backend)
 * that writes ring contents by hand: descriptors, avail entries and indexes of its choosing, legal or not, then
 * kicks. It reads the used rings back and checks guest memory. What a malicious guest can do to a backend.
 */
final class EvilDriver implements AutoCloseable {
    static final ValueLayout.OfLong U64 = ValueLayout.JAVA_LONG_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    static final ValueLayout.OfInt U32 = ValueLayout.JAVA_INT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    static final ValueLayout.OfShort U16 = ValueLayout.JAVA_SHORT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    /** Packed descriptors' flags, written with release and read with acquire (the ring's order). */
    private static final java.lang.invoke.VarHandle U16_RELEASE = ValueLayout.JAVA_SHORT.withOrder(ByteOrder.LITTLE_ENDIAN).varHandle();

    final int size;
    final int pairs;
    final MemFd memfd;
    final Mmap map;
    final MemorySegment mem;
    final long base;
    final Frontend fe;
    final long dataOff;
    final long memSize;
    final List<Ring> rings = new ArrayList<>();
    /** The features the backend took (packed rings: the packed helpers of {@link Ring} apply). */
    long negotiated;
    private long bump;

    /** One ring's placement and its eventfds; {@code availIdx} is the index this tool publishes next. */
    final class Ring {
        final int index;
        final long descOff;
        final long availOff;
        final long usedOff;
        final EventFd kick = EventFd.create();
        final EventFd call = EventFd.create();
        final EventFd err = EventFd.create();
        int availIdx;
        int lastUsed;

        Ring(int index, long off) {
            io.mqvirtio.virtio.Rings.Layout l = io.mqvirtio.virtio.Rings.layout(size, negotiated);
            this.index = index;
            this.descOff = off + l.descOffset();
            this.availOff = off + l.availOffset();
            this.usedOff = off + l.usedOffset();
        }

        void desc(int i, long gpa, int len, int flags, int next) {
            long b = descOff + 16L * i;
            mem.set(U64, b, gpa);
            mem.set(U32, b + 8, len);
            mem.set(U16, b + 12, (short) flags);
            mem.set(U16, b + 14, (short) next);
        }

        /** Puts {@code head} in the next avail slot and publishes it. */
        void offer(int head) {
            mem.set(U16, availOff + AVAIL_RING + 2L * (availIdx % size), (short) head);
            availIdx = (availIdx + 1) & 0xffff;
            mem.set(U16, availOff + AVAIL_IDX, (short) availIdx);
        }

        void setAvailIdx(int v) {
            availIdx = v & 0xffff;
            mem.set(U16, availOff + AVAIL_IDX, (short) availIdx);
        }

        void kick() {
            kick.signal();
        }

        // ---- packed rings (VIRTIO 1.3, 2.8): descriptor i as a driver whose wrap counter is 1 writes it ----

        /** Packed descriptor {@code i}: id, flags (AVAIL set, USED clear, unless {@code flags} sets either). */
        void packed(int i, long gpa, int len, int id, int flags) {
            long b = descOff + 16L * i;
            mem.set(U64, b, gpa);
            mem.set(U32, b + 8, len);
            mem.set(U16, b + 12, (short) id);
            int wrap = (flags & (io.mqvirtio.virtio.PackedRing.F_AVAIL | io.mqvirtio.virtio.PackedRing.F_USED)) != 0
                    ? 0 : io.mqvirtio.virtio.PackedRing.F_AVAIL;
            mem.set(U16, b + 14, (short) (flags | wrap));
        }

        /** Whether packed descriptor {@code i} is marked used for wrap counter 1. */
        boolean packedUsed(int i) {
            int f = Short.toUnsignedInt(mem.get(U16, descOff + 16L * i + 14));
            int both = io.mqvirtio.virtio.PackedRing.F_AVAIL | io.mqvirtio.virtio.PackedRing.F_USED;
            return (f & both) == both;
        }

        // ---- packed rings on any lap: the driver's avail and used cursors, each with its wrap counter ----
        private int availPos;
        private boolean availWrap = true;
        private int usedPos;
        private boolean usedWrap = true;

        /**
         * Descriptor {@code k} of the chain being written at the avail cursor: address, length, id, and (but for the
         * head, {@code k == 0}, whose flags {@link #publishPacked} writes last) {@code flags} with the wrap bits of its lap.
         */
        void packedAt(int k, long gpa, int len, int id, int flags) {
            int pos = availPos + k;
            boolean wrap = pos < size ? availWrap : !availWrap;
            long b = descOff + 16L * (pos % size);
            mem.set(U64, b, gpa);
            mem.set(U32, b + 8, len);
            mem.set(U16, b + 12, (short) id);
            if (k > 0) {
                mem.set(U16, b + 14, (short) (flags | wrapBits(wrap)));
            }
        }

        /**
         * Makes the chain of {@code slots} descriptors written at the avail cursor ({@link #packedAt}) available: its
         * head's flags last, with release, so the device sees it whole (2.8.6); the cursor moves past it.
         */
        void publishPacked(int headFlags, int slots) {
            U16_RELEASE.setRelease(mem, descOff + 16L * availPos + 14, (short) (headFlags | wrapBits(availWrap)));
            availPos += slots;
            if (availPos >= size) {
                availPos -= size;
                availWrap = !availWrap;
            }
        }

        /** The used descriptor at the used cursor as {id, len}, or null if the device has not written it this lap. */
        int[] packedUsedAtCursor() {
            long b = descOff + 16L * usedPos;
            int f = Short.toUnsignedInt((short) U16_RELEASE.getAcquire(mem, b + 14));
            boolean avail = (f & io.mqvirtio.virtio.PackedRing.F_AVAIL) != 0;
            boolean used = (f & io.mqvirtio.virtio.PackedRing.F_USED) != 0;
            if (avail != usedWrap || used != usedWrap) {
                return null;
            }
            return new int[] {Short.toUnsignedInt(mem.get(U16, b + 12)), mem.get(U32, b + 8)};
        }

        /** Moves the used cursor past a used chain's {@code slots} descriptors. */
        void skipPackedUsed(int slots) {
            usedPos += slots;
            if (usedPos >= size) {
                usedPos -= size;
                usedWrap = !usedWrap;
            }
        }

        private static int wrapBits(boolean wrap) {
            return wrap ? io.mqvirtio.virtio.PackedRing.F_AVAIL : io.mqvirtio.virtio.PackedRing.F_USED;
        }

        int usedIdx() {
            return Short.toUnsignedInt(mem.get(U16, usedOff + USED_IDX));
        }

        /** The used element at the cursor, as {id, len}, without moving past it; null if the used index is there. */
        int[] usedAtCursor() {
            if (usedIdx() == lastUsed) {
                return null;
            }
            long e = usedOff + USED_RING + 8L * (lastUsed % size);
            return new int[] {mem.get(U32, e), mem.get(U32, e + 4)};
        }

        /** Buffers the used index counts beyond the cursor. */
        int usedAhead() {
            return (usedIdx() - lastUsed) & 0xffff;
        }

        /** Moves the used cursor past {@code n} buffers (an IN_ORDER batch's one entry moves the index by its size). */
        void skipUsed(int n) {
            lastUsed = (lastUsed + n) & 0xffff;
        }

        /** The next used element not read yet, as {id, len}, or null. */
        int[] nextUsed() {
            if (usedIdx() == lastUsed) {
                return null;
            }
            long e = usedOff + USED_RING + 8L * (lastUsed % size);
            lastUsed = (lastUsed + 1) & 0xffff;
            return new int[] {mem.get(U32, e), mem.get(U32, e + 4)};
        }
    }

    EvilDriver(Path socket, int pairs, int size, long features, long memSize) {
        this(socket, pairs, size, features, memSize, r -> {});
    }

    /** With {@code beforeStart} run on each ring's parts just before its kick fd is sent (which starts it). */
    EvilDriver(Path socket, int pairs, int size, long features, long memSize, java.util.function.Consumer<Ring> beforeStart) {
        this(socket, pairs, size, features, memSize, 0, beforeStart);
    }

    /** Also negotiating the protocol features {@code extraPf} (beyond MQ and REPLY_ACK) where offered. */
    EvilDriver(Path socket, int pairs, int size, long features, long memSize, long extraPf,
               java.util.function.Consumer<Ring> beforeStart) {
        this.size = size;
        this.pairs = pairs;
        this.memSize = memSize;
        this.memfd = MemFd.create("evil-driver", memSize);
        this.map = Mmap.shared(memfd, 0, memSize);
        this.mem = map.segment();
        this.base = mem.address();
        this.fe = Frontend.connect(socket, 5000);
        long offered = fe.getFeatures();
        long pf = fe.getProtocolFeatures() & ((1L << Protocol.PF_MQ) | (1L << Protocol.PF_REPLY_ACK) | extraPf);
        fe.setProtocolFeatures(pf);
        fe.useReplyAck(true);
        fe.setOwner();
        this.negotiated = offered & features;
        fe.setFeatures(negotiated | (1L << Protocol.F_PROTOCOL_FEATURES));
        fe.setMemTable(List.of(new Frontend.Region(base, memSize, base, 0, memfd)));
        long ringBytes = io.mqvirtio.virtio.Rings.layout(size, negotiated).totalBytes();
        for (int r = 0; r < 2 * pairs; r++) {
            Ring ring = new Ring(r, r * ringBytes);
            rings.add(ring);
            fe.setVringNum(r, size);
            fe.setVringBase(r, io.mqvirtio.virtio.Rings.packed(negotiated)
                    ? io.mqvirtio.virtio.RingBase.PACKED_START.encode(true) : 0);
            fe.setVringAddr(r, base + ring.descOff, base + ring.usedOff, base + ring.availOff);
            fe.setVringCall(r, ring.call);
            fe.setVringErr(r, ring.err);
            beforeStart.accept(ring);
            fe.setVringKick(r, ring.kick);
        }
        for (int r = 0; r < 2 * pairs; r++) {
            fe.setVringEnable(r, true);
        }
        this.dataOff = (2L * pairs * ringBytes + 4095) & -4096L;
        this.bump = dataOff;
    }

    Ring rx(int pair) {
        return rings.get(2 * pair);
    }

    Ring tx(int pair) {
        return rings.get(2 * pair + 1);
    }

    long gpa(long off) {
        return base + off;
    }

    /** Reserves {@code bytes} of data area (aligned to 64); returns the offset. */
    long alloc(long bytes) {
        long off = (bump + 63) & -64L;
        bump = off + bytes;
        if (bump > memSize) {
            throw new IllegalStateException("evil driver memory exhausted");
        }
        return off;
    }

    @Override
    public void close() {
        fe.close();
        for (Ring r : rings) {
            r.kick.close();
            r.call.close();
            r.err.close();
        }
        map.close();
        memfd.close();
    }
}
