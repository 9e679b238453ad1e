package io.mqvirtio.net;

import io.mqvirtio.linux.IoVec;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import java.util.concurrent.ConcurrentLinkedQueue;

/**
 * A backend for tests whose frames carry a sequence number (a little-endian int right after the virtio-net header):
 * hands the worker the frames queued in {@link #frames} (cut to the buffers, as a TAP cuts them) and records the
 * sequence number of each frame it sends, in {@link #sent}.
 */
final class SequencePort extends OnePortBackend {
    private static final ValueLayout.OfInt LE32 = ValueLayout.JAVA_INT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);

    final ConcurrentLinkedQueue<byte[]> frames = new ConcurrentLinkedQueue<>();
    final ConcurrentLinkedQueue<Integer> sent = new ConcurrentLinkedQueue<>();

    SequencePort() {
        super("recording");
    }

    @Override
    public Port open(int pair) {
        return new Port() {
            @Override
            public int readFd() {
                return POLL;
            }

            @Override
            public long send(IoVec frame) {
                sent.add(seq(frame));
                return frame.totalBytes();
            }

            @Override
            public long receive(IoVec into) {
                return receiveFrom(frames, into);
            }

            @Override
            public void close() {}
        };
    }

    /** The sequence number of {@code frame}: the little-endian int right after its virtio-net header. */
    static int seq(IoVec frame) {
        byte[] b = new byte[4];
        frame.copyTo(VirtioNet.HDR_SIZE, MemorySegment.ofArray(b), 0, 4);
        return MemorySegment.ofArray(b).get(LE32, 0);
    }
}
