package io.mqvirtio.vhostuser;

import static org.assertj.core.api.Assertions.assertThat;

import io.mqvirtio.linux.Epoll;
import io.mqvirtio.linux.ErrnoException;
import io.mqvirtio.linux.Fd;
import io.mqvirtio.linux.UnixSocket;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Path;
import java.util.Arrays;

/**
 * A raw vhost-user frontend for tests: it sends whatever bytes, header fields and descriptors a test asks for, in
 * one {@code sendmsg}, and reads replies with a deadline. Nothing here checks what it sends; that is the point.
 * Replies are read exactly (header, then the size it announces).
 */
public final class RawPeer implements AutoCloseable {
    static final int V1 = Protocol.VERSION;
    static final int NEED_REPLY = Protocol.FLAG_NEED_REPLY;
    static final int REPLY = Protocol.FLAG_REPLY;
    static final long DEFAULT_TIMEOUT_MS = 5000;

    private final UnixSocket socket;
    private final Epoll epoll;

    /** A reply as it came off the wire. */
    record Reply(int request, int flags, byte[] payload) {
        long u64() {
            assertThat(payload).as("reply payload of %s", this).hasSize(8);
            return ByteBuffer.wrap(payload).order(ByteOrder.LITTLE_ENDIAN).getLong();
        }

        int u32(int at) {
            return ByteBuffer.wrap(payload).order(ByteOrder.LITTLE_ENDIAN).getInt(at);
        }

        @Override
        public String toString() {
            return "Reply[request=" + request + " flags=0x" + Integer.toHexString(flags) + " size=" + payload.length + "]";
        }
    }

    /** The connection ended (end of stream, or reset by the peer) while a reply was expected. */
    static final class Closed extends RuntimeException {
        Closed(String m) {
            super(m);
        }
    }

    private RawPeer(UnixSocket socket) {
        this.socket = socket;
        Epoll e = Epoll.create(1);
        try {
            e.add(socket, Epoll.EPOLLIN | Epoll.EPOLLRDHUP, 0);
        } catch (RuntimeException ex) {
            e.close();
            throw ex;
        }
        this.epoll = e;
    }

    static RawPeer connect(Path path) {
        UnixSocket s = UnixSocket.connect(path);
        try {
            return new RawPeer(s);
        } catch (RuntimeException e) {
            s.close();
            throw e;
        }
    }

    static RawPeer over(UnixSocket s) {
        return new RawPeer(s);
    }

    // ---- sending -------------------------------------------------------------------------------------------------

    /** Sends {@code bytes} exactly as given, with {@code fds} riding on the first byte. */
    void sendRaw(byte[] bytes, int... fds) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment m = a.allocate(Math.max(1, bytes.length));
            MemorySegment.copy(bytes, 0, m, ValueLayout.JAVA_BYTE, 0, bytes.length);
            socket.send(m.asSlice(0, bytes.length), fds);
        }
    }

    /** A header with these exact fields (no version added), then the payload. */
    static byte[] frame(int request, int flags, int size, byte[] payload) {
        ByteBuffer b = ByteBuffer.allocate(Protocol.HEADER_SIZE + payload.length).order(ByteOrder.LITTLE_ENDIAN);
        b.putInt(request).putInt(flags).putInt(size).put(payload);
        return b.array();
    }

    /** One message with raw flags and a size that matches the payload. */
    void send(int request, int flags, byte[] payload, int... fds) {
        sendRaw(frame(request, flags, payload.length, payload), fds);
    }

    void send(Request r, byte[] payload, int... fds) {
        send(r.id, V1, payload, fds);
    }

    /** Sends with NEED_REPLY set. */
    void sendAcked(Request r, byte[] payload, int... fds) {
        send(r.id, V1 | NEED_REPLY, payload, fds);
    }

    /** A request with its own reply: sends it, reads the reply, checks its header, returns the u64. */
    long get(Request r) {
        return get(r, new byte[0]);
    }

    long get(Request r, byte[] payload) {
        send(r, payload);
        Reply rep = expectReplyTo(r.id);
        return rep.u64();
    }

    /** Sends with NEED_REPLY and returns the REPLY_ACK's u64 (0 = success). */
    long ack(Request r, byte[] payload, int... fds) {
        sendAcked(r, payload, fds);
        return expectReplyTo(r.id).u64();
    }

    /** Sends with NEED_REPLY and asserts the ack is 0. */
    void ok(Request r, byte[] payload, int... fds) {
        assertThat(ack(r, payload, fds)).as("REPLY_ACK of %s", r).isZero();
    }

    Reply expectReplyTo(int request) {
        Reply rep = read(DEFAULT_TIMEOUT_MS);
        assertThat(rep.request()).as("request id of %s", rep).isEqualTo(request);
        assertThat(rep.flags()).as("flags of %s", rep).isEqualTo(V1 | REPLY);
        return rep;
    }

    // ---- receiving -----------------------------------------------------------------------------------------------

    /** Reads one reply; throws {@link Closed} if the connection ended, AssertionError on timeout. */
    Reply read(long timeoutMs) {
        long deadline = System.nanoTime() + timeoutMs * 1_000_000L;
        byte[] h = readExactly(Protocol.HEADER_SIZE, deadline);
        ByteBuffer b = ByteBuffer.wrap(h).order(ByteOrder.LITTLE_ENDIAN);
        int request = b.getInt(), flags = b.getInt(), size = b.getInt();
        assertThat(size).as("reply size").isBetween(0, Protocol.MAX_PAYLOAD);
        return new Reply(request, flags, readExactly(size, deadline));
    }

    private byte[] readExactly(int n, long deadline) {
        byte[] out = new byte[n];
        int got = 0;
        try (Arena a = Arena.ofConfined()) {
            MemorySegment buf = a.allocate(Math.max(1, n));
            while (got < n) {
                waitReadable(deadline);
                UnixSocket.Received r;
                try {
                    r = socket.recv(buf.asSlice(got, n - got), 4);
                } catch (ErrnoException e) {
                    if (e.errno() == ErrnoException.ECONNRESET) {
                        throw new Closed("connection reset after " + got + " of " + n + " bytes");
                    }
                    throw e;
                }
                for (int fd : r.fds()) {
                    Fd.adopt(fd).close(); // a backend never sends descriptors on this channel
                }
                assertThat(r.fds()).as("descriptors from the backend").isEmpty();
                if (r.bytes() == 0) {
                    throw new Closed("end of stream after " + got + " of " + n + " bytes");
                }
                got += (int) r.bytes();
            }
            MemorySegment.copy(buf, ValueLayout.JAVA_BYTE, 0, out, 0, n);
        }
        return out;
    }

    private void waitReadable(long deadline) {
        while (true) {
            long left = (deadline - System.nanoTime()) / 1_000_000L;
            if (left <= 0) {
                throw new AssertionError("no reply from the backend within the deadline");
            }
            if (epoll.await((int) Math.min(left, Integer.MAX_VALUE)) > 0) {
                return;
            }
        }
    }

    /** Asserts the backend closes the connection within the timeout without sending anything first. */
    void expectClosed() {
        expectClosed(DEFAULT_TIMEOUT_MS);
    }

    void expectClosed(long timeoutMs) {
        long deadline = System.nanoTime() + timeoutMs * 1_000_000L;
        try {
            Reply r = read(timeoutMs);
            throw new AssertionError("expected the backend to close the connection, but it replied " + r + " "
                    + Arrays.toString(r.payload()));
        } catch (Closed expected) {
            // what we wanted
        }
        assertThat(System.nanoTime()).isLessThanOrEqualTo(deadline + 1_000_000_000L);
    }

    /** True if the backend has closed (reads EOF or reset) within {@code timeoutMs}; false if it is still open. */
    boolean closedWithin(long timeoutMs) {
        try {
            Reply r = read(timeoutMs);
            throw new AssertionError("unexpected reply " + r);
        } catch (Closed c) {
            return true;
        } catch (AssertionError timeout) {
            if (timeout.getMessage() != null && timeout.getMessage().startsWith("no reply")) {
                return false;
            }
            throw timeout;
        }
    }

    UnixSocket socket() {
        return socket;
    }

    @Override
    public void close() {
        try {
            epoll.close();
        } finally {
            socket.close();
        }
    }

    // ---- payloads ------------------------------------------------------------------------------------------------

    public static byte[] u64(long v) {
        return ByteBuffer.allocate(8).order(ByteOrder.LITTLE_ENDIAN).putLong(v).array();
    }

    /** SET_LOG_BASE's payload: the log's size and its offset in the fd. */
    public static byte[] logBase(long size, long offset) {
        return ByteBuffer.allocate(16).order(ByteOrder.LITTLE_ENDIAN).putLong(size).putLong(offset).array();
    }

    public static byte[] state(int index, int num) {
        return ByteBuffer.allocate(8).order(ByteOrder.LITTLE_ENDIAN).putInt(index).putInt(num).array();
    }

    public static byte[] vringAddr(int index, int flags, long desc, long used, long avail, long log) {
        return ByteBuffer.allocate(40).order(ByteOrder.LITTLE_ENDIAN).putInt(index).putInt(flags).putLong(desc)
                .putLong(used).putLong(avail).putLong(log).array();
    }

    /** One row of a memory table: guest-physical address, size, frontend address, mmap offset. */
    record Region(long gpa, long size, long uva, long offset) {}

    static byte[] memTable(Region... regions) {
        return memTable(regions.length, regions);
    }

    /** A memory table whose count field says {@code count}, whatever the rows. */
    static byte[] memTable(int count, Region... regions) {
        ByteBuffer b = ByteBuffer.allocate(8 + 32 * regions.length).order(ByteOrder.LITTLE_ENDIAN);
        b.putInt(count).putInt(0);
        for (Region r : regions) {
            b.putLong(r.gpa()).putLong(r.size()).putLong(r.uva()).putLong(r.offset());
        }
        return b.array();
    }

    /** ADD_MEM_REG / REM_MEM_REG payload: 8 bytes of padding, then one row. */
    static byte[] memReg(Region r) {
        return ByteBuffer.allocate(40).order(ByteOrder.LITTLE_ENDIAN).putLong(0).putLong(r.gpa()).putLong(r.size())
                .putLong(r.uva()).putLong(r.offset()).array();
    }

    static byte[] bytes(int n) {
        return new byte[n];
    }
}
