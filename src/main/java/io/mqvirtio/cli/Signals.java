package io.mqvirtio.cli;

import java.lang.reflect.InvocationHandler;
import java.lang.reflect.Method;
import java.lang.reflect.Proxy;
import java.util.List;
import java.util.function.Consumer;

/**
 * Termination signals as ordinary events: SIGTERM and SIGINT call a handler (on the JVM's signal thread) instead of
 * starting the JVM's shutdown with status 143/130, so a daemon can stop its work in order and exit 0.
 *
 * <p>The JDK's only way to do this is {@code sun.misc.Signal} (module {@code jdk.unsupported}, exported to every
 * module). It is reached by reflection so that the build stays free of "internal proprietary API" warnings; where it
 * is missing, {@link #onTermination} says so and the JVM's default (shutdown hooks, status 128+signal) applies.
 */
final class Signals {
    static final List<String> TERMINATION = List.of("TERM", "INT");

    private Signals() {}

    /**
     * Calls {@code handler} with the signal's name ("TERM", "INT") each time one arrives.
     *
     * @return whether both handlers are installed
     */
    static boolean onTermination(Consumer<String> handler) {
        return on(TERMINATION, handler);
    }

    /** The signals whose default ends the process but which ask a daemon for something else: reload, reopen logs. */
    static final List<String> REQUESTS = List.of("HUP", "USR1", "USR2");

    /**
     * Calls {@code handler} with the signal's name at each SIGHUP, SIGUSR1 or SIGUSR2, instead of the JVM's default
     * (shutdown hooks, status 128+signal): a terminal that hangs up, or a {@code kill -HUP} or {@code kill -USR1}
     * meant to make a daemon reload or reopen its logs (as nginx does), would take every VM's network down.
     *
     * @return whether every handler is installed
     */
    static boolean onRequests(Consumer<String> handler) {
        return on(REQUESTS, handler);
    }

    private static boolean on(List<String> names, Consumer<String> handler) {
        try {
            Class<?> signal = Class.forName("sun.misc.Signal");
            Class<?> handlerType = Class.forName("sun.misc.SignalHandler");
            Method handle = signal.getMethod("handle", signal, handlerType);
            Method getName = signal.getMethod("getName");
            InvocationHandler ih = (proxy, m, args) -> switch (m.getName()) {
                case "handle" -> {
                    handler.accept((String) getName.invoke(args[0]));
                    yield null;
                }
                case "hashCode" -> System.identityHashCode(proxy);
                case "equals" -> proxy == args[0];
                case "toString" -> "mqvirtio termination handler";
                default -> throw new UnsupportedOperationException(m.getName());
            };
            Object h = Proxy.newProxyInstance(Signals.class.getClassLoader(), new Class<?>[] {handlerType}, ih);
            boolean all = true;
            for (String name : names) {
                try {
                    handle.invoke(null, signal.getConstructor(String.class).newInstance(name), h);
                } catch (ReflectiveOperationException e) {
                    all = false; // e.g. -Xrs: the JVM keeps this one; its default still runs the shutdown hooks
                }
            }
            return all;
        } catch (ReflectiveOperationException | RuntimeException | LinkageError e) {
            return false;
        }
    }
}
