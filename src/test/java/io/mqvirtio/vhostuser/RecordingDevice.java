package io.mqvirtio.vhostuser;

import io.mqvirtio.linux.EventFd;
import io.mqvirtio.net.VirtioNet;
import io.mqvirtio.virtio.DeviceRing;
import io.mqvirtio.virtio.VirtioFeatures;
import java.util.ArrayList;
import java.util.List;

/**
 * A device for protocol tests: no workers, it only records what the session asked of it (as strings, in order)
 * and keeps the queues it was given. Offers what a net device offers, with {@code pairs} queue pairs.
 */
final class RecordingDevice implements VhostUserDevice {
    static final long FEATURES = VirtioFeatures.bit(VirtioFeatures.F_VERSION_1) | VirtioFeatures.bit(VirtioFeatures.F_EVENT_IDX)
            | VirtioFeatures.bit(VirtioNet.F_MQ) | VirtioFeatures.bit(VirtioNet.F_MRG_RXBUF);
    static final long PROTOCOL_FEATURES = (1L << Protocol.PF_MQ) | (1L << Protocol.PF_NET_MTU) | (1L << Protocol.PF_RARP);

    private final int pairs;
    private final List<String> calls = new ArrayList<>();
    /** How long {@link #reset} takes (a device whose teardown is slow). */
    volatile long resetDelayMs;
    /** Every {@link #stopRing} fails, as it does for a device whose worker does not answer. */
    volatile boolean failStops;
    /** What {@link #deadReason} answers. */
    volatile String dead;
    private final DeviceRing[] queues;
    private final boolean[] enabled;

    RecordingDevice(int pairs) {
        this.pairs = pairs;
        this.queues = new DeviceRing[2 * pairs];
        this.enabled = new boolean[2 * pairs];
    }

    synchronized List<String> calls() {
        return List.copyOf(calls);
    }

    synchronized void clear() {
        calls.clear();
    }

    synchronized DeviceRing queue(int i) {
        return queues[i];
    }

    synchronized boolean enabled(int i) {
        return enabled[i];
    }

    synchronized int running() {
        int n = 0;
        for (DeviceRing q : queues) {
            n += q != null ? 1 : 0;
        }
        return n;
    }

    private synchronized void record(String s) {
        calls.add(s);
    }

    @Override
    public int maxRings() {
        return 2 * pairs;
    }

    @Override
    public long features() {
        return FEATURES;
    }

    @Override
    public long protocolFeatures() {
        return PROTOCOL_FEATURES;
    }

    @Override
    public long queueNum() {
        return pairs;
    }

    @Override
    public void setFeatures(long features) {
        record("setFeatures 0x" + Long.toHexString(features));
    }

    @Override
    public synchronized void startRing(int index, DeviceRing queue, EventFd kick, EventFd call, boolean on) {
        if (queues[index] != null) {
            throw new IllegalStateException("ring " + index + " started twice");
        }
        queues[index] = queue;
        enabled[index] = on;
        calls.add("start " + index + (on ? " enabled" : " disabled"));
    }

    @Override
    public String deadReason() {
        return dead;
    }

    @Override
    public synchronized DeviceRing stopRing(int index) {
        if (failStops) {
            throw new IllegalStateException("ring " + index + ": the worker did not answer (test)");
        }
        DeviceRing q = queues[index];
        if (q == null) {
            throw new IllegalStateException("ring " + index + " stopped but not running");
        }
        queues[index] = null;
        calls.add("stop " + index);
        return q;
    }

    @Override
    public synchronized void setLog(int index, io.mqvirtio.virtio.RingLog log) {
        DeviceRing q = queues[index];
        if (q == null) {
            throw new IllegalStateException("ring " + index + " given a log but not running");
        }
        q.setLog(log);
        calls.add((log == null ? "unlog " : "log ") + index);
    }

    @Override
    public synchronized void enableRing(int index, boolean on) {
        enabled[index] = on;
        calls.add((on ? "enable " : "disable ") + index);
    }

    @Override
    public void setCall(int index, EventFd call) {
        record("call " + index + (call == null ? " none" : ""));
    }

    @Override
    public void setErr(int index, EventFd err) {
        record("err " + index + (err == null ? " none" : ""));
    }

    @Override
    public void setMtu(int mtu) {
        record("mtu " + mtu);
    }

    @Override
    public void sendRarp(byte[] mac) {
        record("rarp " + mac.length);
    }

    @Override
    public void setStatus(int status) {
        record("status " + status);
    }

    @Override
    public void reset() {
        long d = resetDelayMs;
        if (d > 0) {
            try {
                Thread.sleep(d);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        }
        resetNow();
    }

    private synchronized void resetNow() {
        for (DeviceRing q : queues) {
            if (q != null) {
                throw new IllegalStateException("reset with rings running");
            }
        }
        calls.add("reset");
    }
}
