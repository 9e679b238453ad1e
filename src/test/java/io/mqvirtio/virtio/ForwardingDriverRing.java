package io.mqvirtio.virtio;

/**
 * A driver ring that passes every call on to a real one: tests that make a device act in the middle of the
 * driver's work (before a reap, after a usedPending) override the calls they hook and nothing else.
 */
public class ForwardingDriverRing implements DriverRing {
    protected final DriverRing ring;

    public ForwardingDriverRing(DriverRing ring) {
        this.ring = ring;
    }

    @Override
    public int size() {
        return ring.size();
    }

    @Override
    public int freeDescriptors() {
        return ring.freeDescriptors();
    }

    @Override
    public int inFlight() {
        return ring.inFlight();
    }

    @Override
    public boolean isBroken() {
        return ring.isBroken();
    }

    @Override
    public String brokenReason() {
        return ring.brokenReason();
    }

    @Override
    public boolean supportsIndirect() {
        return ring.supportsIndirect();
    }

    @Override
    public int add(long[] addr, int[] len, int out, int in) {
        return ring.add(addr, len, out, in);
    }

    @Override
    public int addBurst(long[] addr, int[] len, int n, boolean writable, int[] ids) {
        return ring.addBurst(addr, len, n, writable, ids);
    }

    @Override
    public int addIndirect(long[] addr, int[] len, int out, int in) {
        return ring.addIndirect(addr, len, out, in);
    }

    @Override
    public void publish() {
        ring.publish();
    }

    @Override
    public boolean needsKick() {
        return ring.needsKick();
    }

    @Override
    public int usedPending(int enough) {
        return ring.usedPending(enough);
    }

    @Override
    public int reap() {
        return ring.reap();
    }

    @Override
    public int reapedLength() {
        return ring.reapedLength();
    }

    @Override
    public void disableInterrupts() {
        ring.disableInterrupts();
    }

    @Override
    public boolean enableInterrupts() {
        return ring.enableInterrupts();
    }
}
