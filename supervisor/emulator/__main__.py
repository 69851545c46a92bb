from supervisor.emulator.program import main

main()
