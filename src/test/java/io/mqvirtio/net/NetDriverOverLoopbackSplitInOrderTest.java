package io.mqvirtio.net;

/** The driver contract against our own backend (loopback), on the split ring with IN_ORDER. */
class NetDriverOverLoopbackSplitInOrderTest extends NetDriverOverLoopbackTest {
    @Override
    long features() {
        return NetDriver.WANTED_SPLIT;
    }
}
