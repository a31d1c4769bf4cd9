// cpp_client.cpp: keepalive-agent from C++17 with the RAII wrapper.
// Usage: cpp_client URL   (GET twice; the second request reuses the connection)
// Build: c++ -std=c++17 cpp_client.cpp $(pkg-config --cflags --libs keepalive-agent)
#include <iostream>

#include <keepalive_agent.hpp>

int main(int argc, char **argv) {
    if (argc < 2) {
        std::cerr << "usage: " << argv[0] << " URL\n";
        return 2;
    }
    try {
        keepalive::Agent agent; // keep-alive on; freed (connections closed) at scope exit
        for (int i = 0; i < 2; i++) {
            keepalive::Response r = agent.get(argv[1], {{"Accept", "*/*"}}, 10000);
            std::cout << "status=" << r.status() << " bytes=" << r.body().size()
                      << " reused=" << r.reused()
                      << " content-type=" << r.header("content-type").value_or("-") << "\n";
        }
        agent_pool_stats st = agent.stats();
        std::cout << "connections=" << st.connections_opened << " requests=" << st.requests
                  << "\n";
    } catch (const keepalive::Error &e) {
        std::cerr << "error: " << e.what() << "\n"; // "AGENT_CODE_...: message"
        return 1;
    }
    return 0;
}
