package io.mqvirtio.vhostuser;

import io.mqvirtio.linux.ErrnoException;
import io.mqvirtio.linux.Fd;
import io.mqvirtio.linux.UnixSocket;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import java.util.Arrays;
import java.util.concurrent.TimeUnit;

/**
 * A vhost-user connection's message framing over a UNIX stream socket: the one place that reads and writes
 * message headers. Reading is strict: a bad version, a size above {@link Protocol#MAX_PAYLOAD}, more descriptors
 * than one message may carry, or a stream that ends mid-message is a {@link VhostUserException}; the stream cannot
 * be trusted after that and the caller closes it. Used from one thread at a time.
 *
 * <p>Every wait is bounded except the one for the first byte of the next message (a frontend may rightly stay
 * silent for hours): once a message has begun, the rest must follow within {@link #MID_MESSAGE_MILLIS}, and a
 * send that finds no room in the peer's queue for that long fails (SO_SNDTIMEO). Descriptors are counted as they
 * arrive, not once the message is complete: a message dribbled in byte by byte with descriptors on each byte holds
 * at most {@link #MAX_FDS} of them; the kernel discards any beyond (MSG_CTRUNC) and the connection is closed.
 * Descriptors the kernel dropped because this process had none free (also MSG_CTRUNC) fail the message they came
 * with, once it has been read to its end, with an error that names it and says so.
 */
public final class Channel implements AutoCloseable {
    private static final ValueLayout.OfInt LE32 = ValueLayout.JAVA_INT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    static final int MAX_FDS = Protocol.MAX_TABLE_REGIONS;
    /** How long the rest of a begun message may take, and a send may wait for room. */
    static final int MID_MESSAGE_MILLIS = 10_000;

    private final UnixSocket socket;
    private final int midMessageMillis;
    // Automatic arena: closing the channel from another thread (to stop a reader) must not free buffers in use.
    private final MemorySegment header = Arena.ofAuto().allocate(Protocol.HEADER_SIZE);
    private final MemorySegment body = Arena.ofAuto().allocate(Protocol.MAX_PAYLOAD);

    public Channel(UnixSocket socket) {
        this(socket, MID_MESSAGE_MILLIS);
    }

    Channel(UnixSocket socket, int midMessageMillis) {
        this.socket = socket;
        this.midMessageMillis = midMessageMillis;
        socket.setSendTimeout(midMessageMillis);
    }

    public UnixSocket socket() {
        return socket;
    }

    /**
     * Reads one whole message, waiting as long as it takes for it to begin. Returns null if the peer closed the
     * connection between messages.
     *
     * @throws VhostUserException for a malformed message, a connection lost or stalled mid-message
     */
    public Message receive() {
        return receive(-1);
    }

    /**
     * Reads one whole message, which must be complete within {@code timeoutMillis} (negative: no limit for its first
     * byte; the rest is bounded either way). Returns null if the peer closed the connection between messages.
     */
    public Message receive(long timeoutMillis) {
        long start = System.nanoTime();
        // saturating: timeoutMillis * 10^6 overflows from about 292 years on (Long.MAX_VALUE: -10^6, a deadline passed)
        long deadline = timeoutMillis < 0 ? Long.MAX_VALUE : start + TimeUnit.MILLISECONDS.toNanos(timeoutMillis);
        int[] fds = new int[0];
        String what = "a message";
        boolean fdsDropped = false;
        try {
            long got = 0;
            while (got < Protocol.HEADER_SIZE) {
                if (got > 0 && deadline == Long.MAX_VALUE) {
                    deadline = System.nanoTime() + midMessageMillis * 1_000_000L; // the message has begun
                }
                await(deadline, got == 0 ? "a message" : "the rest of a message header (" + got + " of "
                        + Protocol.HEADER_SIZE + " bytes came)");
                UnixSocket.Received r = read(header.asSlice(got), MAX_FDS - fds.length);
                fds = append(fds, r.fds());
                fdsDropped |= r.fdsDropped();
                if (r.bytes() == 0) {
                    if (got == 0 && fds.length == 0) {
                        return null;
                    }
                    throw new VhostUserException("connection closed in the middle of a message header");
                }
                got += r.bytes();
            }
            if (deadline == Long.MAX_VALUE) {
                deadline = System.nanoTime() + midMessageMillis * 1_000_000L;
            }
            int request = header.get(LE32, 0);
            int flags = header.get(LE32, 4);
            int size = header.get(LE32, 8);
            Request known = Request.of(request);
            String id = known != null ? known + " (" + request + ")" : Integer.toUnsignedString(request);
            what = "message " + id;
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
                await(deadline, "the payload of message " + id + " (" + got + " of " + size + " bytes came)");
                UnixSocket.Received r = read(body.asSlice(got, size - got), MAX_FDS - fds.length);
                fds = append(fds, r.fds());
                fdsDropped |= r.fdsDropped();
                if (r.bytes() == 0) {
                    throw new VhostUserException("connection closed after " + got + " of " + size + " payload bytes of message "
                            + id);
                }
                got += r.bytes();
            }
            if (fdsDropped) {
                // Read to its end first, so the error names the message (its descriptors ride on its first byte)
                throw new VhostUserException(what + " came with file descriptors that could not be received: this "
                        + "process has no descriptor free (EMFILE: its limit, RLIMIT_NOFILE, or the system's is "
                        + "reached), and the kernel dropped them");
            }
            byte[] payload = body.asSlice(0, size).toArray(ValueLayout.JAVA_BYTE);
            Message m = new Message(request, flags, payload, fds);
            fds = new int[0];
            return m;
        } catch (ErrnoException e) {
            if (e.errno() == ErrnoException.EMSGSIZE) {
                throw new VhostUserException(what + " carries more than " + MAX_FDS + " fds (file descriptors beyond "
                        + "those were discarded)", e);
            }
            throw new VhostUserException("receiving " + what + ": " + e.getMessage(), e);
        } finally {
            new Message(0, 0, new byte[0], fds).close(); // descriptors of a message we did not deliver
        }
    }

    /** A message that did not arrive in time; {@link #begun}: part of it had. */
    static final class Stalled extends VhostUserException {
        final boolean begun;

        Stalled(String message, boolean begun) {
            super(message);
            this.begun = begun;
        }
    }

    /** Waits until the socket is readable, or throws {@link Stalled} once {@code deadline} (nanoTime) has passed. */
    private void await(long deadline, String what) {
        if (deadline == Long.MAX_VALUE) {
            return; // a blocking read waits for the next message as long as it takes
        }
        while (true) {
            long left = deadline - System.nanoTime();
            if (left <= 0) {
                boolean begun = !what.equals("a message");
                throw new Stalled(begun ? "the peer stalled in the middle of a message: " + what + ", then nothing"
                        : "no message arrived", begun);
            }
            int ms = (int) Math.max(1, Math.min(Integer.MAX_VALUE, left / 1_000_000L));
            if (socket.poll(Fd.POLLIN, ms) != 0) {
                return; // readable, or hung up / in error: the read says which
            }
        }
    }

    /**
     * One blocking read accepting up to {@code fdRoom} descriptors; more than that in it fails it (the kernel
     * discards them, MSG_CTRUNC, and {@link UnixSocket#recv} throws EMSGSIZE).
     */
    private UnixSocket.Received read(MemorySegment into, int fdRoom) {
        UnixSocket.Received r = socket.recv(into, Math.max(0, fdRoom));
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
            String why = e.errno() == ErrnoException.EAGAIN
                    ? "the peer has not read for " + midMessageMillis + " ms" : e.getMessage();
            throw new VhostUserException("sending " + request + ": " + why, e);
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
