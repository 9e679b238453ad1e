package io.mqvirtio.net;

import io.mqvirtio.linux.IoVec;
import java.lang.foreign.MemorySegment;
import java.util.Queue;

/**
 * What the tests' own backends share: one queue pair, no offloads unless a test says otherwise, a name, nothing to
 * close; each gives its port ({@link #open}). {@link #receiveFrom} hands the worker the next queued frame.
 */
abstract class OnePortBackend implements PacketBackend {
    private final String name;

    OnePortBackend(String name) {
        this.name = name;
    }

    @Override
    public int maxPairs() {
        return 1;
    }

    @Override
    public long features() {
        return 0;
    }

    @Override
    public String describe() {
        return name;
    }

    @Override
    public void close() {}

    /**
     * A port without a descriptor (read at each round of its worker) that drops what it is given to send and hands
     * the worker the frames queued in {@code frames} ({@link #receiveFrom}).
     */
    static Port fedPort(Queue<byte[]> frames) {
        return new Port() {
            @Override
            public int readFd() {
                return POLL;
            }

            @Override
            public long send(IoVec frame) {
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

    /** The next frame of {@code frames} (header and frame) into {@code into}, cut to it as a TAP cuts; -1 if none. */
    static long receiveFrom(Queue<byte[]> frames, IoVec into) {
        byte[] f = frames.poll();
        return f == null ? -1 : into.copyFrom(MemorySegment.ofArray(f), 0, f.length);
    }
}
