package io.mqvirtio.net;

/** The driver contract against our own backend (loopback), on the split ring without IN_ORDER. */
class NetDriverOverLoopbackSplitTest extends NetDriverOverLoopbackTest {
    @Override
    long features() {
        return NetDriver.WANTED_SPLIT & NetDriver.WANTED_ANY_ORDER;
    }
}
