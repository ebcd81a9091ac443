# Runs under the MicroPython unix port: rewrite store files on a littlefs image, forever.
#
# micropython store_writer.py IMAGE
# Mounts IMAGE with the simulated board's flash code (bmc.board.simflash), prints the state
# it finds ("state NAME=V|missing|corrupt ..."), then saves rounds of new versions through
# bmc.store and prints "saved NAME V" after each save returns. The test kills it at random.
import sys

from bmc.board import simflash
from bmc.store import Store

NAMES = ("alpha", "beta", "gamma")


def main(image):
    simflash.mount(image, "/flash")
    st = Store("/flash/data")
    top = 0
    out = ["state"]
    for name in NAMES:
        value, problem = st.load(name, None)
        if problem is not None:
            out.append(name + "=" + problem.split(":")[0])
        else:
            out.append(name + "=" + str(value["v"]))
            if value["pad"] != "x" * value["n"]:
                out.append(name + "=torn")
            top = max(top, value["v"])
    print(" ".join(out))
    i = top + 1
    while True:
        for name in NAMES:
            n = 50 + (i * 37) % 900  # sizes vary, so files move between blocks
            st.save(name, {"v": i, "n": n, "pad": "x" * n})
            print("saved", name, i)
        i += 1


main(sys.argv[1])
