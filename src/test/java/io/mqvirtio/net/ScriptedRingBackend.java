package io.mqvirtio.net;

import io.mqvirtio.linux.EventFd;
import io.mqvirtio.linux.Fd;
import io.mqvirtio.linux.Mmap;
import io.mqvirtio.linux.UnixSocket;
import io.mqvirtio.vhostuser.Channel;
import io.mqvirtio.vhostuser.Message;
import io.mqvirtio.vhostuser.Protocol;
import io.mqvirtio.vhostuser.Request;
import io.mqvirtio.virtio.VirtioFeatures;
import java.io.IOException;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.VarHandle;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.concurrent.TimeUnit;
import java.util.function.Function;

/**
 * A vhost-user backend for tests whose data path the test writes by hand: it answers the control protocol, maps
 * the driver's memory from the memfd it is sent (its own mapping, as another process would have), and lets the
 * test take the buffers the driver made available and return them with used entries, lengths and headers of its
 * choosing, legal or not. What a malicious backend can do to the driver.
 *
 * <p>{@code twist} may replace the answer to a request: null behaves, {@code "silent"} never answers again (the
 * backend sleeps until closed), a {@code Long} answers after that many milliseconds, {@code "refused"} acknowledges
 * a request that asked for it with a failure (ack 1), having done nothing, and a {@code byte[]} is the reply's
 * payload (sent whether the request asked for one or not), the request done as usual.
 */
final class ScriptedRingBackend implements AutoCloseable {
    static final long FEATURES = VirtioFeatures.bit(VirtioFeatures.F_VERSION_1) | VirtioFeatures.bit(VirtioNet.F_MRG_RXBUF)
            | VirtioFeatures.bit(VirtioNet.F_MQ) | (1L << Protocol.F_PROTOCOL_FEATURES);
    static final long PROTOCOL = (1L << Protocol.PF_MQ) | (1L << Protocol.PF_REPLY_ACK);
    static final int MAX_PAIRS = 4;

    private static final ValueLayout.OfShort U16 = ValueLayout.JAVA_SHORT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    private static final ValueLayout.OfInt U32 = ValueLayout.JAVA_INT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    private static final ValueLayout.OfLong U64 = ValueLayout.JAVA_LONG_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    private static final VarHandle U16_ATOMIC = ValueLayout.JAVA_SHORT.withOrder(ByteOrder.LITTLE_ENDIAN).varHandle();

    /** A buffer the driver made available: its descriptor id and where it lies in our mapping. */
    record Buffer(int id, long offset, int len) {}

    /** One ring as the driver described it, and this backend's positions in it (test thread only). */
    final class Ring {
        volatile int num;
        volatile long desc, avail, used;   // the driver's addresses (its virtual = guest-physical addresses)
        volatile EventFd kick, call;
        private int nextAvail;
        private int usedIdx;

        /** The next buffer the driver made available, waiting up to 5 s for it to publish one. */
        Buffer take() throws InterruptedException {
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(5);
            while (Short.toUnsignedInt((short) U16_ATOMIC.getAcquire(mem(), off(avail) + 2)) == (nextAvail & 0xffff)) {
                if (System.nanoTime() > deadline) {
                    throw new AssertionError("the driver made no buffer available");
                }
                Thread.sleep(1);
            }
            int id = Short.toUnsignedInt(mem().get(U16, off(avail) + 4 + 2L * (nextAvail++ % num)));
            long d = off(desc) + 16L * id;
            return new Buffer(id, off(mem().get(U64, d)), mem().get(U32, d + 8));
        }

        /** The driver's avail flags: 1 (NO_INTERRUPT) while it wants no notification of used buffers. */
        int availFlags() {
            return Short.toUnsignedInt((short) U16_ATOMIC.getAcquire(mem(), off(avail)));
        }

        /** Writes {@code bytes} into {@code b} at {@code at}. */
        void write(Buffer b, int at, byte[] bytes) {
            MemorySegment.copy(MemorySegment.ofArray(bytes), 0, mem(), b.offset() + at, bytes.length);
        }

        /** Adds a used entry for {@code b} claiming {@code len} bytes (any 32-bit value), not yet published. */
        void use(Buffer b, long len) {
            long e = off(used) + 4 + 8L * (usedIdx++ % num);
            mem().set(U32, e, b.id());
            mem().set(U32, e + 4, (int) len);
        }

        /** Publishes the used entries added so far (one release store of used.idx) and signals the driver. */
        void publish() {
            publishQuietly();
            call.signal();
        }

        /** Publishes the used entries added so far without signalling (as when the driver asked for no call). */
        void publishQuietly() {
            U16_ATOMIC.setRelease(mem(), off(used) + 2, (short) usedIdx);
        }
    }

    private final Path path;
    private final UnixSocket listener;
    private final Function<Message, Object> twist;
    private final Thread thread;
    private final Ring[] rings = new Ring[2 * MAX_PAIRS];
    private volatile UnixSocket connection;
    private volatile Mmap memory;
    private volatile long regionUva;
    private volatile boolean closed;

    ScriptedRingBackend(Path path, Function<Message, Object> twist) {
        this.path = path;
        this.twist = twist;
        for (int i = 0; i < rings.length; i++) {
            rings[i] = new Ring();
        }
        listener = UnixSocket.listen(path, 1);
        thread = Thread.ofPlatform().name("scripted-backend").daemon().start(this::serve);
    }

    ScriptedRingBackend(Path path) {
        this(path, m -> null);
    }

    Path path() {
        return path;
    }

    Ring ring(int index) {
        return rings[index];
    }

    private MemorySegment mem() {
        return memory.segment();
    }

    private long off(long uva) {
        return uva - regionUva;
    }

    /** Serves one connection; {@link #close()} closes it (after waking this thread with a shutdown). */
    private void serve() {
        try {
            UnixSocket s = listener.accept();
            connection = s;
            if (closed) {
                return;
            }
            Channel ch = new Channel(s);
            Message received;
            while ((received = ch.receive()) != null) {
                try (Message m = received) {
                    Object act = twist.apply(m);
                    if ("silent".equals(act)) {
                        while (!closed) {
                            Thread.sleep(10);
                        }
                        return;
                    }
                    if (act instanceof Long delay) {
                        Thread.sleep(delay);
                    }
                    byte[] reply = "refused".equals(act) && m.needsReply() ? Message.u64Payload(1) : answer(m);
                    if (act instanceof byte[] raw) {
                        reply = raw;
                    }
                    if (reply != null) {
                        ch.send(m.requestId(), Protocol.FLAG_REPLY, reply);
                    }
                }
            }
        } catch (Exception e) {
            // the driver hung up, or the test closed us
        }
    }

    /** Records what the driver set up; returns the reply (or ack), null for none. */
    private byte[] answer(Message m) {
        Request r = m.request();
        switch (r) {
            case GET_FEATURES -> {
                return Message.u64Payload(FEATURES);
            }
            case GET_PROTOCOL_FEATURES -> {
                return Message.u64Payload(PROTOCOL);
            }
            case GET_QUEUE_NUM -> {
                return Message.u64Payload(MAX_PAIRS);
            }
            case GET_VRING_BASE -> {
                return Message.vringState(m.u32(0), 0);
            }
            case SET_MEM_TABLE -> {
                long size = m.u64(16);
                regionUva = m.u64(24);
                try (Fd fd = m.takeFd(0)) {
                    memory = Mmap.shared(fd, m.u64(32), size);
                }
            }
            case SET_VRING_NUM -> rings[m.u32(0)].num = m.u32(4);
            case SET_VRING_ADDR -> {
                Ring ring = rings[m.u32(0)];
                ring.desc = m.u64(8);
                ring.used = m.u64(16);
                ring.avail = m.u64(24);
            }
            case SET_VRING_KICK -> rings[(int) m.u64(0)].kick = EventFd.adopt(m.takeRawFd(0));
            case SET_VRING_CALL -> rings[(int) m.u64(0)].call = EventFd.adopt(m.takeRawFd(0));
            default -> {
                // SET_OWNER, SET_FEATURES, SET_VRING_BASE, SET_VRING_ENABLE...: nothing to keep
            }
        }
        return m.needsReply() ? Message.u64Payload(0) : null;
    }

    @Override
    public void close() throws IOException {
        closed = true;
        UnixSocket c = connection;
        if (c != null) {
            c.shutdown(); // wakes the thread's blocking read
        } else {
            UnixSocket.connect(path).close(); // wakes its accept: nobody connected
        }
        try {
            thread.join(5000);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
        c = connection;
        if (c != null) {
            c.close();
        }
        listener.close();
        Files.deleteIfExists(path);
        for (Ring r : rings) {
            if (r.kick != null) {
                r.kick.close();
            }
            if (r.call != null) {
                r.call.close();
            }
        }
        if (memory != null) {
            memory.close();
        }
    }
}
