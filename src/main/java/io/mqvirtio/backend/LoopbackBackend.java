package io.mqvirtio.backend;

import io.mqvirtio.linux.IoVec;
import io.mqvirtio.net.PacketBackend;
import io.mqvirtio.net.Port;
import io.mqvirtio.net.VirtioNet;
import io.mqvirtio.virtio.ChainBurst;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;

/**
 * Every frame a queue pair transmits comes back on the same pair's RX: for tests and demos. Each pair has a small
 * FIFO of frame slots owned by its worker alone (send and receive run on the same thread), so no lock; a full FIFO
 * drops the frame (counted), as a real link would.
 */
public final class LoopbackBackend implements PacketBackend {

    public static final int DEPTH = 256;
    private final int maxPairs;
    private final int slotSize;
    private final long[] drops;

    public LoopbackBackend(int maxPairs, int mtu) {
        this.maxPairs = maxPairs;
        this.slotSize = VirtioNet.HDR_SIZE + 14 + 4 + mtu;
        this.drops = new long[maxPairs];
    }

    @Override
    public int maxPairs() {
        return maxPairs;
    }

    /** No offloads: a looped frame arrives exactly as sent, so the guest must not rely on us to segment. */
    @Override
    public long features() {
        return 0;
    }

    @Override
    public Port open(int pair) {
        return new Port() {
            private final Arena arena = Arena.ofShared();
            private final MemorySegment slots = arena.allocate((long) slotSize * DEPTH, 64);
            private final int[] lengths = new int[DEPTH];
            private int head;
            private int tail;

            @Override
            public int readFd() {
                return POLL;
            }

            @Override
            public long send(IoVec frame) {
                long base = slot(frame.totalBytes());
                if (base < 0) {
                    return frame.totalBytes(); // consumed (and lost), never blocking the guest
                }
                long at = frame.copyTo(slots, base, slotSize);
                filled(at);
                return at;
            }

            @Override
            public boolean sendsBursts() {
                return true;
            }

            @Override
            public void sendBurst(ChainBurst burst, int from, int n) {
                burst.checkRange(from, n);
                for (int i = from; i < from + n; i++) {
                    long len = Integer.toUnsignedLong(burst.length(i));
                    long base = slot(len);
                    if (base >= 0) { // else taken and lost, as by send
                        IoVec.copy(burst.hostAddress(i), slots, base, len);
                        filled(len);
                    }
                }
            }

            /** Where the next frame of {@code len} bytes goes, or -1 (a drop, counted) if the FIFO is full or it is too large. */
            private long slot(long len) {
                if (tail - head == DEPTH || len > slotSize) {
                    drops[pair]++;
                    return -1;
                }
                return (long) (tail % DEPTH) * slotSize;
            }

            /** The frame copied into {@link #slot} holds {@code len} bytes: it joins the FIFO. */
            private void filled(long len) {
                lengths[tail % DEPTH] = (int) len;
                tail++;
            }

            @Override
            public long receive(IoVec into) {
                if (head == tail) {
                    return -1;
                }
                long base = (long) (head % DEPTH) * slotSize;
                long at = into.copyFrom(slots, base, lengths[head % DEPTH]);
                head++;
                return at;
            }

            @Override
            public void reset() {
                head = tail; // frames the last frontend sent are not the next one's
            }

            @Override
            public void close() {
                arena.close();
            }
        };
    }

    /** Frames dropped on pair {@code pair} because its FIFO was full (read from the worker's thread, or racy). */
    public long drops(int pair) {
        return drops[pair];
    }

    @Override
    public String describe() {
        return "loopback";
    }

    @Override
    public void close() {}
}
