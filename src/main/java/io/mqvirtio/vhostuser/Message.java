package io.mqvirtio.vhostuser;

import io.mqvirtio.linux.Fd;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;

/**
 * One vhost-user message: header fields, payload bytes, and the descriptors that came with it (owned by the
 * message until taken with {@link #takeFd(int)}; {@link #close()} closes the rest).
 */
public final class Message implements AutoCloseable {
    private final int requestId;
    private final int flags;
    private final byte[] payload;
    private final int[] fds;

    public Message(int requestId, int flags, byte[] payload, int[] fds) {
        this.requestId = requestId;
        this.flags = flags;
        this.payload = payload;
        this.fds = fds;
    }

    public int requestId() {
        return requestId;
    }

    /** The request, or null if the id is one we do not know. */
    public Request request() {
        return Request.of(requestId);
    }

    public int flags() {
        return flags;
    }

    public boolean needsReply() {
        return (flags & Protocol.FLAG_NEED_REPLY) != 0;
    }

    public boolean isReply() {
        return (flags & Protocol.FLAG_REPLY) != 0;
    }

    public int size() {
        return payload.length;
    }

    public byte[] payload() {
        return payload;
    }

    public int fdCount() {
        int n = 0;
        for (int fd : fds) {
            n += fd >= 0 ? 1 : 0;
        }
        return n;
    }

    /** Hands descriptor {@code i} to the caller, who then owns it. */
    public Fd takeFd(int i) {
        return Fd.adopt(takeRawFd(i));
    }

    /** Hands descriptor {@code i} to the caller as a number, for wrapping in a typed owner (e.g. an EventFd). */
    public int takeRawFd(int i) {
        if (i >= fds.length || fds[i] < 0) {
            throw new VhostUserException(name() + " carries no file descriptor #" + i);
        }
        int fd = fds[i];
        fds[i] = -1;
        return fd;
    }

    public long u64(int offset) {
        check(offset, 8);
        return ByteBuffer.wrap(payload).order(ByteOrder.LITTLE_ENDIAN).getLong(offset);
    }

    public int u32(int offset) {
        check(offset, 4);
        return ByteBuffer.wrap(payload).order(ByteOrder.LITTLE_ENDIAN).getInt(offset);
    }

    private void check(int offset, int len) {
        if (offset < 0 || offset + len > payload.length) {
            throw new VhostUserException(name() + ": payload of " + payload.length + " bytes has no field at " + offset);
        }
    }

    public String name() {
        Request r = request();
        return r != null ? r.name() : "request " + Integer.toUnsignedString(requestId);
    }

    @Override
    public void close() {
        for (int i = 0; i < fds.length; i++) {
            if (fds[i] >= 0) {
                Fd.adopt(fds[i]).close();
                fds[i] = -1;
            }
        }
    }

    /** Little-endian payload builder. */
    public static byte[] u64Payload(long v) {
        return ByteBuffer.allocate(8).order(ByteOrder.LITTLE_ENDIAN).putLong(v).array();
    }

    public static byte[] vringState(int index, int num) {
        return ByteBuffer.allocate(8).order(ByteOrder.LITTLE_ENDIAN).putInt(index).putInt(num).array();
    }

    @Override
    public String toString() {
        return name() + "[flags=0x" + Integer.toHexString(flags) + " size=" + payload.length + " fds=" + fdCount() + "]";
    }
}
