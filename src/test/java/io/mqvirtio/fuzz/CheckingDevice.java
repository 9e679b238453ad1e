package io.mqvirtio.fuzz;

import io.mqvirtio.linux.EventFd;
import io.mqvirtio.net.VirtioNet;
import io.mqvirtio.vhostuser.Protocol;
import io.mqvirtio.vhostuser.VhostUserDevice;
import io.mqvirtio.virtio.DescriptorChain;
import io.mqvirtio.virtio.DeviceRing;
import io.mqvirtio.virtio.VirtioFeatures;
import io.mqvirtio.virtio.VirtqueueException;

/**
 * A device for the session fuzzer that checks the session keeps {@link VhostUserDevice}'s contract: a ring starts
 * only once and with a kick descriptor, stops only while running, is enabled or given descriptors only while
 * running; features are a subset of the offer; reset comes with no ring running; values are in range. A breach
 * is a {@link FuzzFinding}. A started ring's queue is popped a little (guest memory is fuzzed too), as a worker
 * would, so queues the session built from hostile addresses are exercised; nothing is written to guest memory.
 * Offers what a net device offers; no threads, so a fuzz run is deterministic.
 */
final class CheckingDevice implements VhostUserDevice {
    static final long FEATURES = VirtioFeatures.bit(VirtioFeatures.F_VERSION_1) | VirtioFeatures.bit(VirtioFeatures.F_EVENT_IDX)
            | VirtioFeatures.bit(VirtioFeatures.F_INDIRECT_DESC) | VirtioFeatures.bit(VirtioNet.F_MQ)
            | VirtioFeatures.bit(VirtioNet.F_MRG_RXBUF) | VirtioFeatures.bit(VirtioNet.F_MTU);
    static final long PROTOCOL_FEATURES = (1L << Protocol.PF_MQ) | (1L << Protocol.PF_NET_MTU) | (1L << Protocol.PF_RARP);

    private final int pairs;
    private final DeviceRing[] queues;
    private final DescriptorChain chain = new DescriptorChain(64);
    private int resets;
    private int starts;
    private long calls;          // every call the session made of this device
    private long callsAtReset = -1;

    private synchronized void touch() {
        calls++;
    }

    /** Whether the last call the session made was a reset (teardown resets the device last of all). */
    synchronized boolean endedWithReset() {
        return callsAtReset == calls;
    }

    CheckingDevice(int pairs) {
        this.pairs = pairs;
        this.queues = new DeviceRing[2 * pairs];
    }

    synchronized int resets() {
        return resets;
    }

    synchronized int starts() {
        return starts;
    }

    synchronized int running() {
        int n = 0;
        for (DeviceRing q : queues) {
            n += q != null ? 1 : 0;
        }
        return n;
    }

    private void checkIndex(int index, String what) {
        if (index < 0 || index >= queues.length) {
            throw new FuzzFinding(what + " on ring " + index + " of " + queues.length);
        }
    }

    private void checkRunning(int index, String what) {
        checkIndex(index, what);
        if (queues[index] == null) {
            throw new FuzzFinding(what + " on ring " + index + ", which is not running");
        }
    }

    @Override
    public int maxRings() {
        touch();
        return 2 * pairs;
    }

    @Override
    public long features() {
        touch();
        return FEATURES;
    }

    @Override
    public long protocolFeatures() {
        touch();
        return PROTOCOL_FEATURES;
    }

    @Override
    public long queueNum() {
        touch();
        return pairs;
    }

    @Override
    public synchronized void setFeatures(long features) {
        touch();
        if ((features & ~FEATURES) != 0) {
            throw new FuzzFinding("setFeatures 0x" + Long.toHexString(features) + " beyond the offer");
        }
    }

    @Override
    public synchronized void startRing(int index, DeviceRing queue, EventFd kick, EventFd call, boolean enabled) {
        touch();
        checkIndex(index, "startRing");
        if (queues[index] != null) {
            throw new FuzzFinding("ring " + index + " started twice");
        }
        if (queue == null || kick == null || !kick.isOpen() || (call != null && !call.isOpen())) {
            throw new FuzzFinding("ring " + index + " started without a queue or with a closed descriptor");
        }
        queues[index] = queue;
        starts++;
        // A worker's first look at the ring: pop what the guest made available (at most a few chains).
        try {
            for (int i = 0; i < 8 && queue.pop(chain); i++) {
                for (int b = 0; b < chain.count(); b++) {
                    chain.segment(b); // bounds-checked against its region's mapping
                }
            }
        } catch (VirtqueueException broken) {
            // the guest broke this ring; the session must still be able to stop it
        } catch (RuntimeException e) {
            throw new FuzzFinding("DeviceRing.pop threw " + e + " on a ring the session started", e);
        }
    }

    @Override
    public synchronized DeviceRing stopRing(int index) {
        touch();
        checkRunning(index, "stopRing");
        DeviceRing q = queues[index];
        queues[index] = null;
        return q;
    }

    @Override
    public synchronized void setLog(int index, io.mqvirtio.virtio.RingLog log) {
        touch();
        checkRunning(index, "setLog");
        queues[index].setLog(log);
    }

    @Override
    public synchronized void enableRing(int index, boolean enabled) {
        touch();
        checkRunning(index, "enableRing");
    }

    @Override
    public synchronized void setCall(int index, EventFd call) {
        touch();
        checkRunning(index, "setCall");
        if (call != null && !call.isOpen()) {
            throw new FuzzFinding("setCall with a closed descriptor");
        }
    }

    @Override
    public synchronized void setErr(int index, EventFd err) {
        touch();
        checkRunning(index, "setErr");
        if (err != null && !err.isOpen()) {
            throw new FuzzFinding("setErr with a closed descriptor");
        }
    }

    @Override
    public void setMtu(int mtu) {
        touch();
        if (mtu < 68 || mtu > 65535) {
            throw new FuzzFinding("setMtu " + mtu);
        }
    }

    @Override
    public void sendRarp(byte[] mac) {
        touch();
        if (mac.length != 6) {
            throw new FuzzFinding("sendRarp with " + mac.length + " bytes");
        }
    }

    @Override
    public void setStatus(int status) {
        touch();
        if (status < 0 || status > 255) {
            throw new FuzzFinding("setStatus " + status);
        }
    }

    @Override
    public synchronized void reset() {
        if (running() != 0) {
            throw new FuzzFinding("reset with " + running() + " rings running");
        }
        resets++;
        callsAtReset = calls;
    }
}
