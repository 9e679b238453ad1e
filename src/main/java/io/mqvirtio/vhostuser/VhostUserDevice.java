package io.mqvirtio.vhostuser;

import io.mqvirtio.linux.EventFd;
import io.mqvirtio.virtio.DeviceRing;
import io.mqvirtio.virtio.RingLog;

/**
 * A device as a vhost-user backend session drives it (the net device is the first). The session owns the
 * protocol state (features, memory, ring addresses, eventfds); the device owns the workers that run the rings.
 * Every method is called from the session's control thread and returns once the device's workers have applied it:
 * after {@link #stopRing} returns, no worker touches that ring's memory.
 */
public interface VhostUserDevice {
    /** Virtqueues the backend serves (for net: two per queue pair; the control queue stays with the frontend). */
    int maxRings();

    /** Virtio feature bits offered to the frontend (the session adds VHOST_USER_F_PROTOCOL_FEATURES). */
    long features();

    /** Device-specific protocol feature bits (e.g. MQ, NET_MTU, RARP for net). */
    long protocolFeatures();

    /** The answer to GET_QUEUE_NUM (for net: queue pairs, as QEMU expects). */
    long queueNum();

    /**
     * Whether the device can work with {@code features}, which the frontend means to acknowledge (offered ones, before
     * anything changes); a {@link VhostUserException} says why not.
     */
    default void checkFeatures(long features) {}

    /** The frontend acknowledged these virtio features (a subset of {@link #features()}). */
    void setFeatures(long features);

    /**
     * Ring {@code index} starts: from now on the device's worker pops from {@code queue}, waits on {@code kick},
     * and signals {@code call} (null: don't signal).
     */
    void startRing(int index, DeviceRing queue, EventFd kick, EventFd call, boolean enabled);

    /** Ring {@code index} stops; returns the queue the worker gave back (its indexes are final). */
    DeviceRing stopRing(int index);

    /**
     * A started ring logs its writes into guest memory in {@code log} from now on (null: stops logging); when this
     * returns, the ring has flushed what it marked into its previous log and no longer touches it.
     */
    void setLog(int index, RingLog log);

    /** SET_VRING_ENABLE on a started ring. */
    void enableRing(int index, boolean enabled);

    /** A started ring's call eventfd changed (null: don't signal). */
    void setCall(int index, EventFd call);

    /** A started ring's error eventfd changed (null: none): signalled when the ring breaks. */
    default void setErr(int index, EventFd err) {}

    /** NET_SET_MTU. */
    default void setMtu(int mtu) {
        throw new VhostUserException("this device has no MTU");
    }

    /** SEND_RARP: announce the guest's MAC after migration. */
    default void sendRarp(byte[] mac) {
        throw new VhostUserException("this device cannot send RARP");
    }

    /** SET_STATUS: the virtio device status byte. */
    default void setStatus(int status) {}

    /** The frontend went away or reset the device: every ring is already stopped when this is called. */
    void reset();

    /**
     * Why this device can no longer be served (a worker that does not answer, which may still be touching the last
     * session's memory and descriptors), or null. Once set it stays: the session then releases nothing the workers
     * may use, and the server turns frontends away with this reason.
     */
    default String deadReason() {
        return null;
    }
}
