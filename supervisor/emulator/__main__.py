from supervisor.emulator.main import main

main()
