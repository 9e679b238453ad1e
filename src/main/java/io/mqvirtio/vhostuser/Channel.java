package io.mqvirtio.vhostuser;

import io.mqvirtio.linux.ErrnoException;
import io.mqvirtio.linux.UnixSocket;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import java.util.Arrays;

/**
 * A vhost-user connection's message framing over a UNIX stream socket: the one place that reads and writes
 * message headers. Reading is strict: a bad version, a size above {@link Protocol#MAX_PAYLOAD}, or a stream that
 * ends mid-message is a {@link VhostUserException}; the stream cannot be trusted after that and the caller closes it.
 * Used from one thread at a time.
 */
public final class Channel implements AutoCloseable {
    private static final ValueLayout.OfInt LE32 = ValueLayout.JAVA_INT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    private static final int MAX_FDS = Protocol.MAX_TABLE_REGIONS;

    private final UnixSocket socket;
    // Automatic arena: closing the channel from another thread (to stop a reader) must not free buffers in use.
    private final MemorySegment header = Arena.ofAuto().allocate(Protocol.HEADER_SIZE);
    private final MemorySegment body = Arena.ofAuto().allocate(Protocol.MAX_PAYLOAD);

    public Channel(UnixSocket socket) {
        this.socket = socket;
    }

    public UnixSocket socket() {
        return socket;
    }

    /**
     * Reads one whole message. Returns null if the peer closed the connection between messages.
     *
     * @throws VhostUserException for a malformed message or a connection lost mid-message
     */
    public Message receive() {
        int[] fds = new int[0];
        try {
            long got = 0;
            while (got < Protocol.HEADER_SIZE) {
                UnixSocket.Received r = read(header.asSlice(got));
                fds = append(fds, r.fds());
                if (r.bytes() == 0) {
                    if (got == 0 && fds.length == 0) {
                        return null;
                    }
                    throw new VhostUserException("connection closed in the middle of a message header");
                }
                got += r.bytes();
            }
            int request = header.get(LE32, 0);
            int flags = header.get(LE32, 4);
            int size = header.get(LE32, 8);
            Request known = Request.of(request);
            String id = known != null ? known + " (" + request + ")" : Integer.toUnsignedString(request);
            if ((flags & Protocol.VERSION_MASK) != Protocol.VERSION) {
                throw new VhostUserException("message " + id + " has protocol version " + (flags & Protocol.VERSION_MASK)
                        + ", expected " + Protocol.VERSION);
            }
            if (size < 0 || size > Protocol.MAX_PAYLOAD) {
                throw new VhostUserException("message " + id + " announces a payload of " + Integer.toUnsignedString(size)
                        + " bytes, more than " + Protocol.MAX_PAYLOAD);
            }
            got = 0;
            while (got < size) {
                UnixSocket.Received r = read(body.asSlice(got, size - got));
                fds = append(fds, r.fds());
                if (r.bytes() == 0) {
                    throw new VhostUserException("connection closed after " + got + " of " + size + " payload bytes of message "
                            + id);
                }
                got += r.bytes();
            }
            if (fds.length > MAX_FDS) {
                throw new VhostUserException("message " + id + " carries " + fds.length + " file descriptors, more than "
                        + MAX_FDS);
            }
            byte[] payload = body.asSlice(0, size).toArray(ValueLayout.JAVA_BYTE);
            Message m = new Message(request, flags, payload, fds);
            fds = new int[0];
            return m;
        } catch (ErrnoException e) {
            throw new VhostUserException("receiving a message: " + e.getMessage(), e);
        } finally {
            new Message(0, 0, new byte[0], fds).close(); // descriptors of a message we did not deliver
        }
    }

    /** One blocking read; descriptors beyond {@link #MAX_FDS} in one go fail it (the kernel discards them). */
    private UnixSocket.Received read(MemorySegment into) {
        UnixSocket.Received r = socket.recv(into, MAX_FDS);
        if (r.bytes() < 0) {
            for (int fd : r.fds()) {
                new Message(0, 0, new byte[0], new int[] {fd}).close();
            }
            throw new VhostUserException("the control socket is non-blocking; it must block");
        }
        return r;
    }

    /** Sends one message with {@code fds} attached. */
    public void send(int request, int flags, byte[] payload, int... fds) {
        if (payload.length > Protocol.MAX_PAYLOAD) {
            throw new IllegalArgumentException("payload of " + payload.length + " bytes");
        }
        try (Arena a = Arena.ofConfined()) {
            MemorySegment m = a.allocate(Protocol.HEADER_SIZE + payload.length);
            m.set(LE32, 0, request);
            m.set(LE32, 4, flags | Protocol.VERSION);
            m.set(LE32, 8, payload.length);
            MemorySegment.copy(MemorySegment.ofArray(payload), 0, m, Protocol.HEADER_SIZE, payload.length);
            socket.send(m, fds);
        } catch (ErrnoException e) {
            throw new VhostUserException("sending " + request + ": " + e.getMessage(), e);
        }
    }

    /** Sends the reply to {@code to}. */
    public void reply(Message to, byte[] payload) {
        send(to.requestId(), Protocol.FLAG_REPLY, payload);
    }

    private static int[] append(int[] a, int[] b) {
        if (b.length == 0) {
            return a;
        }
        int[] r = Arrays.copyOf(a, a.length + b.length);
        System.arraycopy(b, 0, r, a.length, b.length);
        return r;
    }

    @Override
    public void close() {
        socket.close();
    }
}
