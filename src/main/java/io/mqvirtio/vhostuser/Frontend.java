package io.mqvirtio.vhostuser;

import static io.mqvirtio.vhostuser.Protocol.*;

import io.mqvirtio.linux.ErrnoException;
import io.mqvirtio.linux.Fd;
import io.mqvirtio.linux.UnixSocket;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.TimeUnit;

/**
 * The frontend side of a vhost-user connection: what QEMU or DPDK's virtio-user does, for our userspace driver.
 * Each method sends one request and, where the protocol has one, waits for the reply (with REPLY_ACK negotiated,
 * also for the ack of requests without a reply). The backend is not trusted: a reply for another request, of the
 * wrong size, a negative ack, a connection that drops, or no whole answer within the timeout is a
 * {@link VhostUserException} naming the request. Used by one thread at a time.
 *
 * <p>A reply that did not come whole in time, or one to another request, leaves the connection out of step: the
 * backend may still send the reply, and the next request of that kind would take it for its own (an ack names no
 * request). Every request after that is refused, saying why: close the connection.
 */
public final class Frontend implements AutoCloseable {
    /** A region of our memory as SET_MEM_TABLE describes it. */
    public record Region(long guestPhysAddr, long size, long userAddr, long mmapOffset, Fd fd) {}

    private final Channel channel;
    private final int timeoutMillis;
    private boolean replyAck;
    private long deadline = Long.MAX_VALUE; // nanoTime by which every reply must have come, or none
    private String outOfStep;               // why the replies can no longer be matched to the requests, or null

    private Frontend(UnixSocket socket, int timeoutMillis) {
        this.channel = new Channel(socket, Math.max(1, timeoutMillis)); // a send that finds no room waits as long
        this.timeoutMillis = timeoutMillis;
    }

    /** Connects to a backend listening on {@code path}. */
    public static Frontend connect(Path path, int timeoutMillis) {
        UnixSocket s;
        try {
            s = UnixSocket.connect(path, timeoutMillis); // a backend that never accepts: bounded too
        } catch (ErrnoException e) {
            throw new VhostUserException("cannot connect to the vhost-user backend at " + path + ": " + e.getMessage(), e);
        }
        return new Frontend(s, timeoutMillis);
    }

    /** Wraps a connected socket (e.g. one a listening frontend accepted). */
    public static Frontend over(UnixSocket socket, int timeoutMillis) {
        return new Frontend(socket, timeoutMillis);
    }

    /**
     * Bounds the waits for replies as a whole, not only each one: every reply from now on must have come within
     * {@code millis} ms of this call (and each within the timeout), so that a backend that answers each request just
     * before the timeout cannot stretch a set-up of many requests to many timeouts. {@link #noDeadline} lifts it.
     */
    public void deadlineIn(long millis) {
        // saturating: millis * 10^6 overflows from about 292 years on (Long.MAX_VALUE: -10^6, a deadline passed)
        deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(Math.max(0, millis));
    }

    public void noDeadline() {
        deadline = Long.MAX_VALUE;
    }

    /** From now on every request without a reply asks for an ack (after REPLY_ACK was negotiated). */
    public void useReplyAck(boolean on) {
        replyAck = on;
    }

    public long getFeatures() {
        return u64Reply(Request.GET_FEATURES, new byte[0]);
    }

    public void setFeatures(long f) {
        send(Request.SET_FEATURES, Message.u64Payload(f));
    }

    public long getProtocolFeatures() {
        return u64Reply(Request.GET_PROTOCOL_FEATURES, new byte[0]);
    }

    public void setProtocolFeatures(long f) {
        send(Request.SET_PROTOCOL_FEATURES, Message.u64Payload(f));
    }

    public void setOwner() {
        send(Request.SET_OWNER, new byte[0]);
    }

    public long getQueueNum() {
        return u64Reply(Request.GET_QUEUE_NUM, new byte[0]);
    }

    public void setMemTable(List<Region> regions) {
        if (regions.isEmpty() || regions.size() > MAX_TABLE_REGIONS) {
            throw new IllegalArgumentException(regions.size() + " regions");
        }
        ByteBuffer b = ByteBuffer.allocate(8 + 32 * regions.size()).order(ByteOrder.LITTLE_ENDIAN);
        b.putInt(regions.size()).putInt(0);
        int[] fds = new int[regions.size()];
        for (int i = 0; i < regions.size(); i++) {
            Region r = regions.get(i);
            b.putLong(r.guestPhysAddr()).putLong(r.size()).putLong(r.userAddr()).putLong(r.mmapOffset());
            fds[i] = r.fd().fd();
        }
        send(Request.SET_MEM_TABLE, b.array(), fds);
    }

    public void setVringNum(int index, int num) {
        send(Request.SET_VRING_NUM, Message.vringState(index, num));
    }

    public void setVringBase(int index, int base) {
        send(Request.SET_VRING_BASE, Message.vringState(index, base));
    }

    public void setVringAddr(int index, long desc, long used, long avail) {
        setVringAddr(index, 0, desc, used, avail, 0);
    }

    /** SET_VRING_ADDR with flags (VHOST_VRING_F_LOG) and the used ring's log address. */
    public void setVringAddr(int index, int flags, long desc, long used, long avail, long log) {
        ByteBuffer b = ByteBuffer.allocate(40).order(ByteOrder.LITTLE_ENDIAN);
        b.putInt(index).putInt(flags).putLong(desc).putLong(used).putLong(avail).putLong(log);
        send(Request.SET_VRING_ADDR, b.array());
    }

    /**
     * SET_LOG_BASE (protocol feature LOG_SHMFD): the backend logs the pages it writes into {@code size} bytes of
     * {@code fd} from {@code offset}. Waits for the backend's reply, which has no payload.
     */
    public void setLogBase(Fd fd, long size, long offset) {
        ByteBuffer b = ByteBuffer.allocate(16).order(ByteOrder.LITTLE_ENDIAN);
        b.putLong(size).putLong(offset);
        checkInStep(Request.SET_LOG_BASE);
        channel.send(Request.SET_LOG_BASE.id, 0, b.array(), fd.fd());
        await(Request.SET_LOG_BASE).close();
    }

    public void setVringKick(int index, Fd fd) {
        send(Request.SET_VRING_KICK, Message.u64Payload(index), fd.fd());
    }

    public void setVringCall(int index, Fd fd) {
        send(Request.SET_VRING_CALL, Message.u64Payload(index), fd.fd());
    }

    public void setVringErr(int index, Fd fd) {
        send(Request.SET_VRING_ERR, Message.u64Payload(index), fd.fd());
    }

    public void setVringEnable(int index, boolean on) {
        send(Request.SET_VRING_ENABLE, Message.vringState(index, on ? 1 : 0));
    }

    /**
     * Stops ring {@code index}; returns where the backend stopped, as vhost-user encodes it (split: the next avail
     * index; packed: avail and used indexes with wrap bits, see {@link io.mqvirtio.virtio.RingBase}).
     */
    public int getVringBase(int index) {
        try (Message m = request(Request.GET_VRING_BASE, Message.vringState(index, 0))) {
            expectSize(m, 8);
            if (m.u32(0) != index) {
                throw new VhostUserException("GET_VRING_BASE for ring " + index + " answered for ring " + m.u32(0));
            }
            return m.u32(4);
        }
    }

    public void setStatus(int status) {
        send(Request.SET_STATUS, Message.u64Payload(status));
    }

    public long getStatus() {
        return u64Reply(Request.GET_STATUS, new byte[0]);
    }

    /** Sends a request that has no reply of its own (acked when REPLY_ACK is in use). */
    private void send(Request r, byte[] payload, int... fds) {
        checkInStep(r);
        if (!replyAck) {
            channel.send(r.id, 0, payload, fds);
            return;
        }
        channel.send(r.id, FLAG_NEED_REPLY, payload, fds);
        try (Message m = await(r)) {
            expectSize(m, 8);
            long v = m.u64(0);
            if (v != 0) {
                throw new VhostUserException(r + " was refused by the backend (ack " + v + ")");
            }
        }
    }

    private long u64Reply(Request r, byte[] payload) {
        try (Message m = request(r, payload)) {
            expectSize(m, 8);
            return m.u64(0);
        }
    }

    private Message request(Request r, byte[] payload) {
        checkInStep(r);
        channel.send(r.id, 0, payload);
        return await(r);
    }

    /** The reply to {@code r}, or an exception: nothing else may arrive on a frontend's channel. */
    private Message await(Request r) {
        Message m;
        long wait = timeoutMillis;
        if (deadline != Long.MAX_VALUE) {
            long left = Math.ceilDiv(deadline - System.nanoTime(), 1_000_000L);
            if (left <= 0) {
                throw outOfStep(new VhostUserException(r + ": no reply from the backend within the deadline set for "
                        + "the replies"));
            }
            wait = Math.min(wait, left);
        }
        try {
            m = channel.receive(wait); // the whole reply, not only its first byte, within the timeout
        } catch (Channel.Stalled e) {
            throw outOfStep(new VhostUserException(r + ": " + (e.begun ? "the backend stalled in the middle of its "
                    + "reply (" + e.getMessage() + ")" : "no reply from the backend") + " within " + wait + " ms"
                    + (wait < timeoutMillis ? " (what was left of the deadline set for the replies)" : ""), e));
        } catch (VhostUserException e) {
            throw outOfStep(e);
        }
        if (m == null) {
            throw outOfStep(new VhostUserException(r + ": the backend closed the connection"));
        }
        if (m.requestId() != r.id || !m.isReply()) {
            m.close();
            throw outOfStep(new VhostUserException(r + ": the backend answered with " + m.name()
                    + (m.isReply() ? "" : " (not a reply)")));
        }
        if (m.fdCount() != 0) {
            m.close();
            throw new VhostUserException(r + ": the reply carried file descriptors");
        }
        return m;
    }

    /** Marks the connection out of step because of {@code e}; returns it. */
    private VhostUserException outOfStep(VhostUserException e) {
        outOfStep = e.getMessage();
        return e;
    }

    private void checkInStep(Request r) {
        if (outOfStep != null) {
            throw new VhostUserException(r + " not sent: the connection is out of step since an earlier reply failed ("
                    + outOfStep + "); close it");
        }
    }

    private static void expectSize(Message m, int size) {
        if (m.size() != size) {
            throw new VhostUserException(m.name() + " reply has " + m.size() + " bytes, expected " + size);
        }
    }

    /** The connection's socket, for watching it (its hang-up): requests go through the methods above only. */
    public io.mqvirtio.linux.UnixSocket socket() {
        return channel.socket();
    }

    @Override
    public void close() {
        channel.close();
    }
}
