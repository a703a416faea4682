# cmake -DIN=a.proto -DOUT=b.proto -P strip_services.cmake
# Copies a .proto without its `service` blocks. The C code uses gRPC core directly and needs only
# the messages; protoc-c's service stubs would also name a C function after the `Register` RPC,
# which is a C keyword.
file(READ ${IN} text)
string(REGEX REPLACE "service [A-Za-z_0-9]+ {[^}]*}" "// (service stripped for protoc-c)" text "${text}")
file(WRITE ${OUT} "${text}")
