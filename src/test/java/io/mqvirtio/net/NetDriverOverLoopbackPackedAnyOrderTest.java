package io.mqvirtio.net;

/** The driver contract against our own backend (loopback), on the packed ring without IN_ORDER. */
class NetDriverOverLoopbackPackedAnyOrderTest extends NetDriverOverLoopbackTest {
    @Override
    long features() {
        return NetDriver.WANTED_ANY_ORDER;
    }
}
